//! `qkd amplify`: Toeplitz-hash a key file with a seed file.

use std::path::PathBuf;
use std::time::Instant;

use qkd_core::BitVec;
use qkd_postproc::amplify::{Construction, ToeplitzHasher};

use crate::Format;

/// Options of `qkd amplify`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The key to compress: raw bytes, bits LSB-first.
    #[arg(long)]
    input: PathBuf,
    /// Number of input bits, when it is not 8 × the file size (the file must
    /// hold exactly ⌈N/8⌉ bytes; bits past N in the last byte are ignored).
    #[arg(long)]
    input_bits: Option<usize>,
    /// The seed: raw bytes, bits LSB-first; N + M − 1 bits (N − 1 with
    /// --modified); the file must hold exactly that many bits rounded up to
    /// whole bytes.
    #[arg(long)]
    seed: PathBuf,
    /// Output length M in bits.
    #[arg(long)]
    output_bits: usize,
    /// Use the modified Toeplitz construction (identity | Toeplitz), seed N − 1 bits.
    #[arg(long)]
    modified: bool,
    /// Where to write the M output bits (LSB-first bytes, zero-padded).
    #[arg(long)]
    out: PathBuf,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(serde::Serialize)]
struct Report {
    input_bits: usize,
    output_bits: usize,
    seed_bits: usize,
    construction: &'static str,
    seconds: f64,
    input_mbit_per_second: f64,
}

fn read_bits(
    path: &PathBuf,
    bits: usize,
    what: &str,
) -> Result<BitVec, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read {what} file {}: {e}", path.display()))?;
    let need = bits.div_ceil(8);
    if bytes.len() != need {
        return Err(format!(
            "{what} file {} has {} bytes; {bits} bits need exactly {need}",
            path.display(),
            bytes.len()
        )
        .into());
    }
    Ok(BitVec::from_bytes_lsb(&bytes, bits).map_err(|e| format!("{what} file: {e}"))?)
}

pub(crate) fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let input_bits = match args.input_bits {
        Some(n) => n,
        None => {
            let len = std::fs::metadata(&args.input)
                .map_err(|e| format!("cannot read input file {}: {e}", args.input.display()))?
                .len();
            usize::try_from(len)? * 8
        }
    };
    let construction = if args.modified {
        Construction::Modified
    } else {
        Construction::Standard
    };
    let hasher = ToeplitzHasher::new(input_bits, args.output_bits, construction)?;
    let input = read_bits(&args.input, input_bits, "input")?;
    let seed_bits = hasher.seed_bits();
    let seed_bytes = std::fs::metadata(&args.seed)
        .map_err(|e| format!("cannot read seed file {}: {e}", args.seed.display()))?
        .len();
    if usize::try_from(seed_bytes)? != seed_bits.div_ceil(8) {
        return Err(format!(
            "seed file {} has {seed_bytes} bytes, but {} → {} bits{} needs a {seed_bits}-bit seed ({} bytes)",
            args.seed.display(),
            input_bits,
            args.output_bits,
            if args.modified { " (modified)" } else { "" },
            seed_bits.div_ceil(8)
        )
        .into());
    }
    let seed = read_bits(&args.seed, seed_bits, "seed")?;
    let start = Instant::now();
    let output = hasher.hash(seed.as_bitslice(), input.as_bitslice())?;
    let seconds = start.elapsed().as_secs_f64();
    std::fs::write(&args.out, output.to_bytes_lsb())
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    let report = Report {
        input_bits,
        output_bits: args.output_bits,
        seed_bits,
        construction: if args.modified {
            "modified"
        } else {
            "standard"
        },
        seconds,
        input_mbit_per_second: input_bits as f64 / seconds / 1e6,
    };
    match args.format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Text => println!(
            "{} → {} bits ({} Toeplitz, {}-bit seed) in {:.3} s ({:.0} Mbit/s of input); wrote {}",
            report.input_bits,
            report.output_bits,
            report.construction,
            report.seed_bits,
            report.seconds,
            report.input_mbit_per_second,
            args.out.display()
        ),
    }
    Ok(())
}
