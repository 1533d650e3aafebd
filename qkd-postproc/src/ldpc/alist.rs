//! The `alist` format (MacKay): the sparse parity-check matrix as text, so
//! vendors can bring their own codes and codes can be compared with other
//! tools on equal terms.
//!
//! ```text
//! N M                      columns (variables), rows (checks)
//! max_col_deg max_row_deg
//! deg(col 1) … deg(col N)
//! deg(row 1) … deg(row M)
//! N lines: the rows of each column, 1-based, padded with 0 to max_col_deg
//! M lines: the columns of each row, 1-based, padded with 0 to max_row_deg
//! ```
//!
//! The reader accepts lists with or without the zero padding, checks every
//! count against the text that is left before allocating, rejects indices
//! out of range, repeated entries and column lists that disagree with the
//! row lists, and never panics. The writer pads with zeros (the common
//! dialect).

use std::fmt::Write as _;

use super::LdpcError;
use super::code::LdpcCode;

/// Largest `N` or `M` the reader accepts.
pub const MAX_ALIST_DIMENSION: usize = 1 << 24;

/// Writes `code` as `alist` text.
#[must_use]
pub fn write_alist(code: &LdpcCode) -> String {
    let (n, m) = (code.n(), code.m());
    let rows: Vec<Vec<u32>> = (0..m).map(|i| code.check(i)).collect();
    let mut cols: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, row) in rows.iter().enumerate() {
        for &v in row {
            cols[v as usize].push(i as u32);
        }
    }
    let max_col = cols.iter().map(Vec::len).max().unwrap_or(0);
    let max_row = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut out = String::with_capacity(8 * code.edges() + 64);
    let _ = writeln!(out, "{n} {m}");
    let _ = writeln!(out, "{max_col} {max_row}");
    let join = |it: &mut dyn Iterator<Item = usize>| {
        it.map(|d| d.to_string()).collect::<Vec<_>>().join(" ")
    };
    let _ = writeln!(out, "{}", join(&mut cols.iter().map(Vec::len)));
    let _ = writeln!(out, "{}", join(&mut rows.iter().map(Vec::len)));
    for (lists, width) in [(&cols, max_col), (&rows, max_row)] {
        for list in lists {
            let mut line: Vec<String> = list.iter().map(|&x| (x + 1).to_string()).collect();
            line.resize(width, "0".to_string());
            let _ = writeln!(out, "{}", line.join(" "));
        }
    }
    out
}

/// Reads `alist` text into a code held with `Z = 1` (its puncturing order
/// drawn with `puncture_seed`).
///
/// # Errors
/// [`LdpcError::Alist`] naming what is wrong with the text, or
/// [`LdpcError::Code`] for a matrix the decoders cannot use (a check of
/// degree 0 or above 255, `m ≥ n`).
pub fn read_alist(text: &str, puncture_seed: u64) -> Result<LdpcCode, LdpcError> {
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect();
    let mut next_line = lines.iter();
    let mut header = || next_line.next().ok_or(LdpcError::Alist("file ends early"));
    let nm = parse_numbers(header()?)?;
    let (n, m) = match nm[..] {
        [n, m] => (n, m),
        _ => return Err(LdpcError::Alist("first line must be `N M`")),
    };
    if n == 0 || m == 0 || n > MAX_ALIST_DIMENSION || m > MAX_ALIST_DIMENSION {
        return Err(LdpcError::Alist("N and M must be 1 to 2^24"));
    }
    let maxes = parse_numbers(header()?)?;
    let (max_col, max_row) = match maxes[..] {
        [a, b] => (a, b),
        _ => return Err(LdpcError::Alist("second line must be two maximum degrees")),
    };
    let col_deg = parse_numbers(header()?)?;
    let row_deg = parse_numbers(header()?)?;
    if col_deg.len() != n || row_deg.len() != m {
        return Err(LdpcError::Alist("degree lines do not have N and M entries"));
    }
    if col_deg.iter().any(|&d| d > max_col) || row_deg.iter().any(|&d| d > max_row) {
        return Err(LdpcError::Alist("a degree exceeds the stated maximum"));
    }
    let col_edges: usize = col_deg.iter().sum();
    let row_edges: usize = row_deg.iter().sum();
    if col_edges != row_edges {
        return Err(LdpcError::Alist(
            "column and row degrees count different edges",
        ));
    }
    let rest: Vec<&Vec<&str>> = next_line.collect();
    if rest.len() != n + m {
        return Err(LdpcError::Alist("expected N column lines and M row lines"));
    }
    let read_list = |tokens: &[&str], deg: usize, bound: usize| -> Result<Vec<u32>, LdpcError> {
        let values = parse_numbers(tokens)?;
        let (listed, padding) = values.split_at(deg.min(values.len()));
        if listed.len() != deg || padding.iter().any(|&x| x != 0) {
            return Err(LdpcError::Alist("a list does not match its degree"));
        }
        let mut out = Vec::with_capacity(deg);
        for &x in listed {
            if x == 0 || x > bound {
                return Err(LdpcError::Alist("an index is out of range"));
            }
            out.push((x - 1) as u32);
        }
        out.sort_unstable();
        if out.windows(2).any(|w| w[0] == w[1]) {
            return Err(LdpcError::Alist("a list repeats an index"));
        }
        Ok(out)
    };
    let mut rows: Vec<Vec<u32>> = Vec::with_capacity(m);
    for (i, tokens) in rest[n..].iter().enumerate() {
        rows.push(read_list(tokens, row_deg[i], n)?);
    }
    // The column lists must describe the same matrix.
    let mut from_rows: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, row) in rows.iter().enumerate() {
        for &v in row {
            from_rows[v as usize].push(i as u32);
        }
    }
    for (v, tokens) in rest[..n].iter().enumerate() {
        if read_list(tokens, col_deg[v], m)? != from_rows[v] {
            return Err(LdpcError::Alist("column lists disagree with row lists"));
        }
    }
    LdpcCode::from_rows(n, &rows, puncture_seed)
}

fn parse_numbers(tokens: &[&str]) -> Result<Vec<usize>, LdpcError> {
    tokens
        .iter()
        .map(|t| {
            t.parse::<usize>()
                .ok()
                .filter(|&x| x <= MAX_ALIST_DIMENSION)
                .ok_or(LdpcError::Alist("not a number (or above 2^24)"))
        })
        .collect()
}
