//! One run, one code, one set of frames: qkd-postproc's LDPC decoder and
//! ldpc-toolbox's decoders side by side (see README.md).
//!
//! ```text
//! ldpc-toolbox-peer --code code.alist --qber Q [--frames N] [--rounds R]
//!                   [--iterations I] [--decoders A,B,…]
//! ```
//!
//! The code comes from `qkd ldpc export`. ldpc-toolbox reads the alist
//! text; for qkd-postproc the same text is read and, when its matrix is one
//! of the shipped codes (same canonical bytes), that quasi-cyclic code is
//! used (the alist reader keeps no lifting, so the vectorised kernel would
//! see one lane per layer).
//!
//! Frames: ldpc-toolbox decodes codewords (`H·x = 0`), so every frame is
//! the all-zero codeword through a binary symmetric channel of crossover
//! `Q`; both decoders get the same error pattern, ldpc-toolbox as `f64`
//! LLRs `±ln((1 − Q)/Q)`, qkd-postproc as its 8-bit channel LLRs with a
//! zero syndrome. qkd-postproc is also run on the same error patterns
//! added to random frames with their (non-zero) syndromes, its normal use.
//!
//! Timing: only the decode calls, per decoder, in `R` rounds over all
//! frames with the decoders interleaved round by round; the median round
//! is reported. Throughput counts frame bits (`n`) per second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ldpc_toolbox::decoder::factory::{DecoderFactory, DecoderImplementation};
use ldpc_toolbox::sparse::SparseMatrix;
use qkd_core::BitVec;
use qkd_postproc::ldpc::{
    CodeSpec, Decoder, LdpcCode, MotherRate, SHIPPED_SEED, channel_magnitude, read_alist,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

struct Options {
    code: String,
    qber: f64,
    frames: usize,
    rounds: usize,
    iterations: usize,
    decoders: Vec<String>,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        code: String::new(),
        qber: 0.0,
        frames: 50,
        rounds: 3,
        iterations: 100,
        decoders: "HLAminstari8,HLMinstarapproxi8,Aminstari8,HLAminstarf32,HLPhif32"
            .split(',')
            .map(String::from)
            .collect(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<f64>().map_err(|_| format!("{flag}: not a number"));
        match flag.as_str() {
            "--code" => o.code = value,
            "--qber" => o.qber = number(&value)?,
            "--frames" => o.frames = number(&value)? as usize,
            "--rounds" => o.rounds = number(&value)? as usize,
            "--iterations" => o.iterations = number(&value)? as usize,
            "--decoders" => o.decoders = value.split(',').map(String::from).collect(),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if o.code.is_empty() || !(o.qber > 0.0 && o.qber < 0.5) || o.frames == 0 || o.rounds == 0 {
        return Err("usage: --code FILE --qber Q (0 < Q < 0.5) [--frames N] [--rounds R] \
                    [--iterations I] [--decoders A,B]"
            .into());
    }
    Ok(o)
}

/// The shipped code with the same matrix as `read`, if any.
fn shipped(read: &LdpcCode) -> Option<LdpcCode> {
    MotherRate::ladder()
        .filter_map(|rate| {
            LdpcCode::build(CodeSpec {
                rate,
                n: read.n(),
                seed: SHIPPED_SEED,
            })
            .ok()
        })
        .find(|c| c.canonical_bytes() == read.canonical_bytes())
}

struct Tally {
    name: String,
    rounds: Vec<Duration>,
    failures: usize,
    iterations: usize,
}

impl Tally {
    fn new(name: String) -> Self {
        Tally {
            name,
            rounds: Vec::new(),
            failures: 0,
            iterations: 0,
        }
    }

    fn median(&self) -> Duration {
        let mut r = self.rounds.clone();
        r.sort();
        r[r.len() / 2]
    }
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let text = std::fs::read_to_string(&o.code).unwrap_or_else(|e| {
        eprintln!("--code {}: {e}", o.code);
        std::process::exit(2);
    });
    let read = read_alist(&text, SHIPPED_SEED).unwrap_or_else(|e| {
        eprintln!("--code {}: {e}", o.code);
        std::process::exit(2);
    });
    let h = SparseMatrix::from_alist(&text).unwrap_or_else(|e| {
        eprintln!("ldpc-toolbox cannot read {}: {e}", o.code);
        std::process::exit(2);
    });
    let (n, m) = (read.n(), read.m());
    let ours_code = match shipped(&read) {
        Some(code) => {
            println!("code: shipped quasi-cyclic code, Z = {}", code.lifting());
            code
        }
        None => {
            println!("code: not a shipped code, qkd-postproc decodes it with Z = 1");
            read
        }
    };
    let ours_code = Arc::new(ours_code);
    println!(
        "n = {n}, m = {m}, rate {:.4}, {} edges, QBER {}, f = {:.3}, {} frames x {} rounds, at most {} iterations",
        ours_code.rate(),
        ours_code.edges(),
        o.qber,
        (1.0 - ours_code.rate()) / qkd_core::h2(o.qber),
        o.frames,
        o.rounds,
        o.iterations
    );

    // The frames: error patterns, and random frames for the syndrome mode.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let threshold = (o.qber * 2f64.powi(32)) as u64;
    let errors: Vec<BitVec> = (0..o.frames)
        .map(|_| {
            let mut e = BitVec::zeros(n);
            for i in 0..n {
                if u64::from(rng.next_u32()) < threshold {
                    e.flip(i);
                }
            }
            e
        })
        .collect();
    let frames: Vec<BitVec> = (0..o.frames).map(|_| BitVec::random(n, &mut rng)).collect();
    let c8 = channel_magnitude(o.qber);
    let cf = ((1.0 - o.qber) / o.qber).ln();
    let llrs8 = |y: &BitVec| -> Vec<i8> { (0..n).map(|i| if y.get(i) { -c8 } else { c8 }).collect() };
    let zero_syndrome = BitVec::zeros(m);
    let ours_zero: Vec<Vec<i8>> = errors.iter().map(&llrs8).collect();
    let ours_random: Vec<(Vec<i8>, BitVec)> = frames
        .iter()
        .zip(&errors)
        .map(|(x, e)| {
            let mut y = x.clone();
            y ^= e;
            (llrs8(&y), ours_code.syndrome(x))
        })
        .collect();
    let theirs_llrs: Vec<Vec<f64>> = errors
        .iter()
        .map(|e| (0..n).map(|i| if e.get(i) { -cf } else { cf }).collect())
        .collect();

    let mut ours = Decoder::new(Arc::clone(&ours_code));
    let mut theirs: Vec<(DecoderImplementation, Box<dyn ldpc_toolbox::decoder::LdpcDecoder>)> =
        Vec::new();
    for name in &o.decoders {
        match name.parse::<DecoderImplementation>() {
            Ok(imp) => theirs.push((imp, imp.build_decoder(h.clone()))),
            Err(e) => {
                eprintln!("--decoders {name}: {e}");
                std::process::exit(2);
            }
        }
    }
    let mut tallies = vec![
        Tally::new(format!("qkd-postproc {:?}, zero syndrome", ours.backend())),
        Tally::new(format!("qkd-postproc {:?}, random frames", ours.backend())),
    ];
    tallies.extend(
        theirs
            .iter()
            .map(|(imp, _)| Tally::new(format!("ldpc-toolbox {imp}"))),
    );
    let max_it = u32::try_from(o.iterations).unwrap_or(u32::MAX);
    for round in 0..o.rounds {
        let count = round == 0;
        // qkd-postproc, zero syndrome.
        let start = Instant::now();
        let mut fails = 0;
        let mut its = 0;
        for llr in &ours_zero {
            let out = ours.decode(llr, &zero_syndrome, max_it).expect("lengths match");
            its += out.iterations as usize;
            fails += usize::from(!out.converged || ours.decisions().count_ones() != 0);
        }
        tallies[0].rounds.push(start.elapsed());
        if count {
            tallies[0].failures = fails;
            tallies[0].iterations = its;
        }
        // qkd-postproc, random frames.
        let start = Instant::now();
        let (mut fails, mut its) = (0, 0);
        for ((llr, s), x) in ours_random.iter().zip(&frames) {
            let out = ours.decode(llr, s, max_it).expect("lengths match");
            its += out.iterations as usize;
            fails += usize::from(!out.converged || ours.decisions() != *x);
        }
        tallies[1].rounds.push(start.elapsed());
        if count {
            tallies[1].failures = fails;
            tallies[1].iterations = its;
        }
        for (k, (_, dec)) in theirs.iter_mut().enumerate() {
            let start = Instant::now();
            let (mut fails, mut its) = (0, 0);
            for llr in &theirs_llrs {
                match dec.decode(llr, o.iterations) {
                    Ok(out) => {
                        its += out.iterations;
                        fails += usize::from(out.codeword.iter().any(|&b| b != 0));
                    }
                    Err(out) => {
                        its += out.iterations;
                        fails += 1;
                    }
                }
            }
            tallies[2 + k].rounds.push(start.elapsed());
            if count {
                tallies[2 + k].failures = fails;
                tallies[2 + k].iterations = its;
            }
        }
    }
    let mbps = |t: &Tally| (n * o.frames) as f64 / t.median().as_secs_f64() / 1e6;
    let ours_mbps = mbps(&tallies[0]);
    let fastest_theirs = tallies[2..]
        .iter()
        .map(|t| (mbps(t), t))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    println!("decoder,median_round_s,mbit_per_s,fer,iterations_mean,ratio_ours_to_this");
    for t in &tallies {
        println!(
            "{},{:.4},{:.3},{:.4},{:.1},{:.1}",
            t.name,
            t.median().as_secs_f64(),
            mbps(t),
            t.failures as f64 / o.frames as f64,
            t.iterations as f64 / o.frames as f64,
            ours_mbps / mbps(t)
        );
    }
    if let Some((theirs_mbps, t)) = fastest_theirs {
        println!(
            "fastest ldpc-toolbox decoder: {} at {:.3} Mbit/s (fer {:.4}); qkd-postproc {:.2} Mbit/s (fer {:.4}): ratio {:.1}",
            t.name,
            theirs_mbps,
            t.failures as f64 / o.frames as f64,
            ours_mbps,
            tallies[0].failures as f64 / o.frames as f64,
            ours_mbps / theirs_mbps
        );
    }
}
