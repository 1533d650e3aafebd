//! `qkd amplify`: Toeplitz-hash a key file with a seed file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::builder::RangedU64ValueParser;
use qkd_core::BitVec;
use qkd_postproc::amplify::{Construction, MAX_INPUT_BITS, ToeplitzHasher};

use crate::{Format, clock, flag};

/// Options of `qkd amplify`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The key to compress: raw bytes, bits LSB-first.
    #[arg(long, value_parser = flag::input_file)]
    input: PathBuf,
    /// Number of input bits, when it is not 8 × the file size (the file must
    /// hold exactly ⌈N/8⌉ bytes; bits past N in the last byte are ignored).
    /// At most 2^34.
    #[arg(long, allow_negative_numbers = true, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BITS))]
    input_bits: Option<usize>,
    /// The seed: raw bytes, bits LSB-first; N + M − 1 bits (N − 1 with
    /// --modified); the file must hold exactly that many bits rounded up to
    /// whole bytes.
    #[arg(long, value_parser = flag::input_file)]
    seed: PathBuf,
    /// Output length M in bits (1 to N; below N with --modified).
    #[arg(long, allow_negative_numbers = true, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_BITS))]
    output_bits: usize,
    /// Use the modified Toeplitz construction (identity | Toeplitz), seed N − 1 bits.
    #[arg(long)]
    modified: bool,
    /// Where to write the M output bits (LSB-first bytes, zero-padded); not
    /// the input or the seed file.
    #[arg(long, value_parser = flag::output_file)]
    out: PathBuf,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

/// Largest `--input-bits` and `--output-bits`: the hasher's limit.
const MAX_BITS: u64 = MAX_INPUT_BITS as u64;

#[derive(serde::Serialize)]
struct Report {
    input_bits: usize,
    output_bits: usize,
    seed_bits: usize,
    construction: &'static str,
    seconds: f64,
    /// `None` when the hash took less than [`clock::MIN_TIMED`].
    input_mbit_per_second: Option<f64>,
}

/// Reads `bits` bits from the file given by `flag`.
fn read_bits(path: &Path, bits: usize, flag: &str) -> Result<BitVec, Box<dyn std::error::Error>> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("{flag} {}: cannot read: {e}", path.display()))?;
    let need = bits.div_ceil(8);
    if bytes.len() != need {
        return Err(format!(
            "{flag} {} has {} bytes; {bits} bits need exactly {need}",
            path.display(),
            bytes.len()
        )
        .into());
    }
    Ok(BitVec::from_bytes_lsb(&bytes, bits)
        .map_err(|e| format!("{flag} {}: {e}", path.display()))?)
}

/// Whether `a` and `b` name the same existing file: the same canonical path
/// (symbolic links, `..`) or, on Unix, the same device and inode (hard
/// links). A path that does not exist names no existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()) {
            return true;
        }
    }
    let _ = (ma, mb);
    matches!(
        (a.canonicalize(), b.canonicalize()),
        (Ok(ca), Ok(cb)) if ca == cb
    )
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    for (path, flag) in [(&args.input, "--input"), (&args.seed, "--seed")] {
        if same_file(&args.out, path) {
            return Err(format!(
                "--out {} is the same file as {flag} {}: writing would destroy it",
                args.out.display(),
                path.display()
            )
            .into());
        }
    }
    let input_bits = match args.input_bits {
        Some(n) => n,
        None => {
            let len = std::fs::metadata(&args.input)
                .map_err(|e| format!("--input {}: cannot read: {e}", args.input.display()))?
                .len();
            if len == 0 {
                return Err(format!("--input {} is empty", args.input.display()).into());
            }
            usize::try_from(len)
                .ok()
                .and_then(|l| l.checked_mul(8))
                .filter(|&bits| bits <= MAX_INPUT_BITS)
                .ok_or_else(|| {
                    format!(
                        "--input {} is longer than the hasher's {MAX_INPUT_BITS} bits",
                        args.input.display()
                    )
                })?
        }
    };
    let construction = if args.modified {
        Construction::Modified
    } else {
        Construction::Standard
    };
    let hasher = ToeplitzHasher::new(input_bits, args.output_bits, construction)
        .map_err(|e| format!("--output-bits {}: {e}", args.output_bits))?;
    let input = read_bits(&args.input, input_bits, "--input")?;
    let seed_bits = hasher.seed_bits();
    let seed_bytes = std::fs::metadata(&args.seed)
        .map_err(|e| format!("--seed {}: cannot read: {e}", args.seed.display()))?
        .len();
    if usize::try_from(seed_bytes).ok() != Some(seed_bits.div_ceil(8)) {
        return Err(format!(
            "--seed {} has {seed_bytes} bytes, but {} → {} bits{} needs a {seed_bits}-bit seed ({} bytes)",
            args.seed.display(),
            input_bits,
            args.output_bits,
            if args.modified { " (modified)" } else { "" },
            seed_bits.div_ceil(8)
        )
        .into());
    }
    let seed = read_bits(&args.seed, seed_bits, "--seed")?;
    let start = Instant::now();
    let output = hasher.hash(seed.as_bitslice(), input.as_bitslice())?;
    let elapsed = start.elapsed();
    std::fs::write(&args.out, output.to_bytes_lsb())
        .map_err(|e| format!("--out {}: cannot write: {e}", args.out.display()))?;
    let report = Report {
        input_bits,
        output_bits: args.output_bits,
        seed_bits,
        construction: if args.modified {
            "modified"
        } else {
            "standard"
        },
        seconds: elapsed.as_secs_f64(),
        input_mbit_per_second: clock::per_second(input_bits as f64 / 1e6, elapsed),
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Text => println!(
            "{} → {} bits ({} Toeplitz, {}-bit seed) in {:.3} s ({}); wrote {}",
            report.input_bits,
            report.output_bits,
            report.construction,
            report.seed_bits,
            report.seconds,
            report.input_mbit_per_second.map_or_else(
                || "too short to time".to_owned(),
                |r| format!("{r:.0} Mbit/s of input")
            ),
            args.out.display()
        ),
    }
    Ok(())
}
