//! Efficiency and frame error rate of LDPC reconciliation per QBER (slow;
//! run in release):
//!
//! `cargo test --release -p qkd-postproc --test ldpc_efficiency -- --ignored --nocapture`

#![allow(clippy::print_stdout)] // the tables are the output of these tests

use qkd_core::{BitVec, h2};
use qkd_postproc::ldpc::{
    CodeCache, CodeSpec, Decoder, FramePlan, MotherRate, RateChoice, SHIPPED_SEED, Settings,
    Variant, choose_guided_plan, choose_plan, reconcile_in_memory,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `LDPC_SHIFT`, `LDPC_SHIFT2`, `LDPC_OFFSET` override the decoder's
/// default scaling, `LDPC_CAP` its sum-product message cap (for tuning).
fn scaling_from_env(decoder: &mut Decoder) {
    if std::env::var("LDPC_CAP").is_ok() {
        decoder
            .set_message_max(env("LDPC_CAP", 27.0) as u8)
            .unwrap();
    }
    if std::env::var("LDPC_RULE").is_ok_and(|r| r == "minsum") {
        decoder.set_rule(qkd_postproc::ldpc::CheckRule::MinSum);
    }
    if std::env::var("LDPC_SHIFT").is_ok() {
        decoder
            .set_scaling(
                env("LDPC_SHIFT", 5.0) as u8,
                env("LDPC_SHIFT2", 0.0) as u8,
                env("LDPC_OFFSET", 1.0) as u8,
            )
            .unwrap();
    }
}

fn noisy(key: &BitVec, qber: f64, rng: &mut ChaCha8Rng) -> BitVec {
    let mut bob = key.clone();
    let threshold = (qber * 2f64.powi(32)) as u64;
    for i in 0..key.len() {
        if u64::from(rng.next_u32()) < threshold {
            bob.flip(i);
        }
    }
    bob
}

/// Per rung, unpunctured: the QBER at which about half the frames fail
/// (the code's practical threshold) and the efficiency there.
#[test]
#[ignore = "slow: thresholds of the ladder"]
fn ladder_thresholds() {
    let n: usize = std::env::var("LDPC_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 14);
    let trials = 20;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for rate in MotherRate::ladder() {
        let code = std::sync::Arc::new(
            qkd_postproc::ldpc::LdpcCode::build(CodeSpec {
                rate,
                n,
                seed: SHIPPED_SEED,
            })
            .unwrap(),
        );
        let plan = FramePlan::new(code.clone(), 0, 0).unwrap();
        let mut decoder = Decoder::new(code.clone());
        scaling_from_env(&mut decoder);
        let capacity_q = {
            // QBER with h2 = 1 − R
            let (mut lo, mut hi) = (1e-4, 0.5);
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if h2(mid) < 1.0 - code.rate() {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            lo
        };
        let mut line = format!(
            "R={:.3} untainted={} qcap={:.4}:",
            code.rate(),
            code.untainted(),
            capacity_q
        );
        for f in [1.02, 1.05, 1.08, 1.12, 1.16, 1.2, 1.25] {
            // q with f·h2(q) = 1 − R
            let (mut lo, mut hi) = (1e-4, 0.5);
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if f * h2(mid) < 1.0 - code.rate() {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            let q = lo;
            let mut fails = 0;
            let mut iters = 0;
            for _ in 0..trials {
                let a = BitVec::random(n, &mut rng);
                let b = noisy(&a, q, &mut rng);
                let out = reconcile_in_memory(
                    &plan,
                    &mut decoder,
                    &a,
                    &b,
                    Settings {
                        qber: q,
                        variant: Variant::RateAdaptive,
                        max_iterations: 100,
                    },
                    &mut rng,
                )
                .unwrap();
                if !out.keys_equal {
                    fails += 1;
                }
                iters += out.iterations;
            }
            line += &format!(
                " f{f}:fer={:.2},it={}",
                fails as f64 / trials as f64,
                iters / trials
            );
        }
        println!("{line}");
    }
}

/// The one-sided 95 % upper confidence bound (Clopper-Pearson) on a frame
/// error rate after `failed` failures in `frames` frames: the `p` at which
/// `P(X ≤ failed)` is 5 % (for no failure, `1 − 0.05^(1/frames)` ≈
/// `3/frames`).
fn fer_upper_95(failed: usize, frames: usize) -> f64 {
    if frames == 0 || failed >= frames {
        return 1.0;
    }
    let cdf = |p: f64| -> f64 {
        // Σ_{k ≤ failed} C(frames, k) p^k (1 − p)^(frames − k), in logs.
        let mut log_choose = 0.0;
        let mut total = 0.0;
        for k in 0..=failed {
            if k > 0 {
                log_choose += ((frames - k + 1) as f64 / k as f64).ln();
            }
            total += (log_choose + k as f64 * p.ln() + (frames - k) as f64 * (-p).ln_1p()).exp();
        }
        total
    };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if cdf(mid) > 0.05 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

#[test]
fn fer_bound_is_the_clopper_pearson_one() {
    // No failure in 1000 frames: 1 − 0.05^(1/1000) = 2.991e-3.
    assert!((fer_upper_95(0, 1000) - 2.9912e-3).abs() < 1e-6);
    // One in 1000: 4.7e-3 (tables of the exact binomial bound).
    assert!((fer_upper_95(1, 1000) - 4.735e-3).abs() < 2e-5);
    assert_eq!(fer_upper_95(5, 5), 1.0);
}

/// Blind reconciliation: mean f and fer per QBER (`LDPC_QBERS=0.01,0.02`
/// for a few; `LDPC_RUNG=i` forces ladder rung `i` instead of
/// `choose_plan`'s choice; `LDPC_MODULATED` the punctured and shortened
/// share of a frame, default 0.1; `LDPC_SEED` the frames' random stream;
/// `LDPC_STEP` the bits revealed per round as a share of `key·h2(q)`,
/// default 0.01). `LDPC_VARIANT=guided` runs guided reconciliation on
/// `choose_guided_plan`'s plans instead (started at `LDPC_F`; a forced
/// rung unpunctured, shortened as that function shortens).
/// With many frames (`LDPC_TRIALS=1000`) it is the frame-error-rate
/// evidence: `failed` frames were not reconciled within `LDPC_ROUNDS`
/// rounds, `wrong` of them converged to another word, `fer_95` is the 95 %
/// upper bound on the frame error rate (about 3/frames when none failed).
#[test]
#[ignore = "slow: the efficiency table"]
fn blind_table() {
    let n: usize = std::env::var("LDPC_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 17);
    let trials: usize = std::env::var("LDPC_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let f_start: f64 = std::env::var("LDPC_F")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.02);
    let modulated = env("LDPC_MODULATED", 0.1);
    let guided = std::env::var("LDPC_VARIANT").is_ok_and(|v| v == "guided");
    let mut cache = CodeCache::new();
    let mut rng = ChaCha8Rng::seed_from_u64(env("LDPC_SEED", 9.0) as u64);
    println!(
        "qber,n,key_len,rate,f_mean,fer,rounds_mean,frames,failed,wrong,fer_95,f_stddev,f_max,iterations_mean"
    );
    let qbers: Vec<f64> = std::env::var("LDPC_QBERS")
        .unwrap_or_else(|_| "0.01,0.02,0.03,0.04,0.05,0.06,0.07,0.08,0.09,0.10".into())
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    for q in qbers {
        let plan = match std::env::var("LDPC_RUNG").ok().and_then(|r| r.parse().ok()) {
            // A forced rung (for comparing rungs): the syndrome aimed at
            // `f_start` as `choose_plan` aims it, punctured or shortened.
            Some(rung) => {
                let rate = MotherRate::from_index(rung).unwrap();
                let d = (modulated * n as f64).round() as usize;
                let need = f_start * h2(q) * (n - d) as f64;
                let m = ((1.0 - rate.rate()) * n as f64).round();
                let p = (m - need).round().clamp(0.0, d as f64) as usize;
                let spec = CodeSpec {
                    rate,
                    n,
                    seed: SHIPPED_SEED,
                };
                if guided {
                    // Unpunctured, shortened to start at `f_start` (as
                    // `choose_guided_plan` shortens).
                    let s = (n as f64 - m / (f_start * h2(q))).ceil();
                    FramePlan::for_rung(&mut cache, spec, 0, s.clamp(0.0, d as f64) as usize)
                        .unwrap()
                } else {
                    let p = p.min(cache.get(spec).unwrap().untainted());
                    FramePlan::for_rung(&mut cache, spec, p, d - p).unwrap()
                }
            }
            None => {
                let choose = if guided {
                    choose_guided_plan
                } else {
                    choose_plan
                };
                let choice = RateChoice {
                    modulated,
                    target_efficiency: f_start,
                };
                choose(&mut cache, n, SHIPPED_SEED, q, choice).unwrap()
            }
        };
        let mut decoder = Decoder::new(plan.code().clone());
        scaling_from_env(&mut decoder);
        let step = (plan.key_len() as f64 * h2(q) * env("LDPC_STEP", 0.01)).ceil() as usize;
        let (mut fsum, mut ok, mut fails, mut rounds) = (0.0, 0, 0, 0);
        let (mut wrong, mut fsquares, mut fmax) = (0, 0.0, 0.0f64);
        let mut iterations = 0u64;
        for _ in 0..trials {
            let a = BitVec::random(plan.key_len(), &mut rng);
            let b = noisy(&a, q, &mut rng);
            let real_q = a.hamming_distance(&b) as f64 / a.len() as f64;
            let out = reconcile_in_memory(
                &plan,
                &mut decoder,
                &a,
                &b,
                Settings {
                    qber: q,
                    variant: if guided {
                        Variant::Guided {
                            step,
                            max_rounds: env("LDPC_ROUNDS", 40.0) as u32,
                            resume_iterations: env("LDPC_RESUME", 20.0) as u32,
                        }
                    } else {
                        Variant::Blind {
                            step,
                            max_rounds: env("LDPC_ROUNDS", 40.0) as u32,
                        }
                    },
                    max_iterations: env("LDPC_ITER", 60.0) as u32,
                },
                &mut rng,
            )
            .unwrap();
            rounds += out.rounds;
            iterations += u64::from(out.iterations);
            if out.keys_equal {
                ok += 1;
                let f = out.leaked_bits as f64 / (plan.key_len() as f64 * h2(real_q));
                fsum += f;
                fsquares += f * f;
                fmax = fmax.max(f);
            } else {
                fails += 1;
                // Converged to another word: only the confirmation would
                // catch it.
                wrong += usize::from(out.converged);
            }
        }
        let mean = fsum / ok.max(1) as f64;
        let variance = (fsquares / ok.max(1) as f64 - mean * mean).max(0.0);
        println!(
            "{q},{n},{},{:.3},{mean:.4},{:.4},{:.2},{trials},{fails},{wrong},{:.2e},{:.4},{fmax:.4},{:.1}",
            plan.key_len(),
            plan.code().rate(),
            fails as f64 / trials as f64,
            rounds as f64 / trials as f64,
            fer_upper_95(fails, trials),
            variance.sqrt(),
            iterations as f64 / trials as f64,
        );
    }
}

#[allow(clippy::needless_range_loop)] // index loops read best here
/// Float sum-product (flooding) on the same codes: tells the code's
/// quality apart from the 8-bit decoder's losses. `LDPC_MS=α` runs float
/// normalised min-sum instead (how min-sum was found to fail on the
/// Table I codes whatever α).
fn bp_decode(
    code: &qkd_postproc::ldpc::LdpcCode,
    llr: &[f64],
    syndrome: &BitVec,
    iters: u32,
) -> Option<BitVec> {
    let m = code.m();
    let checks: Vec<Vec<u32>> = (0..m).map(|i| code.check(i)).collect();
    let mut msg: Vec<Vec<f64>> = checks.iter().map(|c| vec![0.0; c.len()]).collect();
    let n = code.n();
    let mut post = llr.to_vec();
    for _ in 0..iters {
        let mut acc = llr.to_vec();
        for (i, c) in checks.iter().enumerate() {
            let t: Vec<f64> = c
                .iter()
                .zip(&msg[i])
                .map(|(&v, &r)| ((post[v as usize] - r) / 2.0).tanh())
                .collect();
            let sign = if syndrome.get(i) { -1.0 } else { 1.0 };
            if let Some(alpha) = std::env::var("LDPC_MS")
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
            {
                let q: Vec<f64> = c
                    .iter()
                    .zip(&msg[i])
                    .map(|(&v, &r)| post[v as usize] - r)
                    .collect();
                for k in 0..c.len() {
                    let mut p = sign;
                    let mut m = f64::INFINITY;
                    for (l, &x) in q.iter().enumerate() {
                        if l != k {
                            p *= x.signum();
                            m = m.min(x.abs());
                        }
                    }
                    msg[i][k] = p * alpha * m;
                }
                continue;
            }
            for k in 0..c.len() {
                let mut p = sign;
                for (l, &x) in t.iter().enumerate() {
                    if l != k {
                        p *= x;
                    }
                }
                let p = p.clamp(-0.999_999_999, 0.999_999_999);
                msg[i][k] = 2.0 * p.atanh();
            }
        }
        for (i, c) in checks.iter().enumerate() {
            for (k, &v) in c.iter().enumerate() {
                acc[v as usize] += msg[i][k];
            }
        }
        post = acc;
        let mut x = BitVec::zeros(n);
        for v in 0..n {
            if post[v] < 0.0 {
                x.set(v, true);
            }
        }
        if code.syndrome(&x) == *syndrome {
            return Some(x);
        }
    }
    None
}

#[test]
#[ignore = "slow: float BP reference"]
fn bp_reference_thresholds() {
    let n: usize = env("LDPC_N", 4096.0) as usize;
    let trials = env("LDPC_TRIALS", 10.0) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let rungs: Vec<u8> = std::env::var("LDPC_RUNGS")
        .unwrap_or_else(|_| "0,2,4,6,8".into())
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    let fs: Vec<f64> = std::env::var("LDPC_FS")
        .unwrap_or_else(|_| "1.08,1.16,1.25,1.5".into())
        .split(',')
        .map(|x| x.parse().unwrap())
        .collect();
    for rate in MotherRate::ladder().filter(|r| rungs.contains(&r.index())) {
        let code = qkd_postproc::ldpc::LdpcCode::build(CodeSpec {
            rate,
            n,
            seed: SHIPPED_SEED,
        })
        .unwrap();
        let code = std::sync::Arc::new(code);
        let mut fixed = Decoder::new(code.clone());
        scaling_from_env(&mut fixed);
        let mut line = format!("BP R={:.3}:", code.rate());
        for &f in &fs {
            let (mut lo, mut hi) = (1e-4, 0.5);
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if f * h2(mid) < 1.0 - code.rate() {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            let q = lo;
            let (mut fails, mut fixed_fails) = (0, 0);
            for _ in 0..trials {
                let a = BitVec::random(n, &mut rng);
                let b = noisy(&a, q, &mut rng);
                let c = ((1.0 - q) / q).ln();
                let llr: Vec<f64> = (0..n).map(|i| if b.get(i) { -c } else { c }).collect();
                let syndrome = code.syndrome(&a);
                if bp_decode(&code, &llr, &syndrome, 100).as_ref() != Some(&a) {
                    fails += 1;
                }
                let magnitude = qkd_postproc::ldpc::channel_magnitude(q);
                let llrs: Vec<i8> = (0..n)
                    .map(|i| if b.get(i) { -magnitude } else { magnitude })
                    .collect();
                let out = fixed.decode(&llrs, &syndrome, 100).unwrap();
                if !out.converged || fixed.decisions() != a {
                    fixed_fails += 1;
                }
            }
            // Float BP, then this crate's decoder on the same frames.
            line += &format!(
                " f{f}:fer={:.2}/{:.2}",
                fails as f64 / trials as f64,
                fixed_fails as f64 / trials as f64
            );
        }
        println!("{line}");
    }
}

/// One degree profile from `LDPC_PROFILE=nb:mb:deg*count,deg*count,...`
/// (every base column, degree 2 included; `;` separates profiles): frame
/// error rate per f (`LDPC_RULE=minsum` for the min-sum rule).
#[test]
#[ignore = "slow: tuning a profile"]
fn profile_threshold() {
    let Ok(text) = std::env::var("LDPC_PROFILE") else {
        return;
    };
    let n: usize = env("LDPC_N", 16384.0) as usize;
    let trials = env("LDPC_TRIALS", 20.0) as usize;
    for one in text.split(';') {
        let parts: Vec<&str> = one.split(':').collect();
        let columns = parts[2]
            .split(',')
            .map(|dc| {
                let (d, c) = dc.split_once('*').unwrap();
                (d.parse().unwrap(), c.parse().unwrap())
            })
            .collect();
        let profile = qkd_postproc::ldpc::code::DegreeProfile {
            base_columns: parts[0].parse().unwrap(),
            base_rows: parts[1].parse().unwrap(),
            columns,
        };
        let code = std::sync::Arc::new(
            qkd_postproc::ldpc::LdpcCode::build_profile(&profile, n, 1).unwrap(),
        );
        let plan = FramePlan::new(code.clone(), 0, 0).unwrap();
        let mut decoder = Decoder::new(code.clone());
        scaling_from_env(&mut decoder);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut line = format!("{one} R={:.3}:", code.rate());
        let fs: Vec<f64> = std::env::var("LDPC_FS")
            .unwrap_or_else(|_| "1.08,1.12,1.16,1.2,1.25".into())
            .split(',')
            .map(|x| x.parse().unwrap())
            .collect();
        for f in fs {
            let (mut lo, mut hi) = (1e-4, 0.5);
            for _ in 0..60 {
                let mid = (lo + hi) / 2.0;
                if f * h2(mid) < 1.0 - code.rate() {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            let q = lo;
            let mut fails = 0;
            let mut residual = Vec::new();
            for _ in 0..trials {
                let a = BitVec::random(n, &mut rng);
                let b = noisy(&a, q, &mut rng);
                let settings = Settings {
                    qber: q,
                    variant: Variant::RateAdaptive,
                    max_iterations: env("LDPC_ITER", 100.0) as u32,
                };
                let out =
                    reconcile_in_memory(&plan, &mut decoder, &a, &b, settings, &mut rng).unwrap();
                if !out.keys_equal {
                    fails += 1;
                    residual.push(plan.key_of(&decoder.decisions()).hamming_distance(&a));
                }
            }
            line += &format!(" f{f}:{:.2}{residual:?}", fails as f64 / trials as f64);
        }
        println!("{line}");
    }
}

/// The plan `choose_plan` makes for `LDPC_Q`, `LDPC_F`, `LDPC_N`, and its
/// frame error rate over `LDPC_TRIALS` frames in one round.
#[test]
#[ignore = "diagnostic"]
fn plan_probe() {
    let n = env("LDPC_N", 16384.0) as usize;
    let q = env("LDPC_Q", 0.02);
    let f = env("LDPC_F", 1.45);
    let trials = env("LDPC_TRIALS", 20.0) as usize;
    let mut cache = CodeCache::new();
    let plan = choose_plan(
        &mut cache,
        n,
        SHIPPED_SEED,
        q,
        RateChoice {
            modulated: 0.1,
            target_efficiency: f,
        },
    )
    .unwrap();
    let mut decoder = Decoder::new(plan.code().clone());
    scaling_from_env(&mut decoder);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut fails = 0;
    let mut residual = Vec::new();
    for _ in 0..trials {
        let a = BitVec::random(plan.key_len(), &mut rng);
        let b = noisy(&a, q, &mut rng);
        let settings = Settings {
            qber: q,
            variant: Variant::RateAdaptive,
            max_iterations: 100,
        };
        if !reconcile_in_memory(&plan, &mut decoder, &a, &b, settings, &mut rng)
            .unwrap()
            .keys_equal
        {
            fails += 1;
            residual.push(plan.key_of(&decoder.decisions()).hamming_distance(&a));
        }
    }
    println!(
        "rate {:.3} p {} s {} key {} untainted {} fer {:.4} ({fails} of {trials}, wrong bits {residual:?})",
        plan.code().rate(),
        plan.punctured(),
        plan.shortened(),
        plan.key_len(),
        plan.code().untainted(),
        fails as f64 / trials as f64
    );
}

/// CPU seconds of this thread so far (user + system, from
/// `/proc/thread-self/stat`, in clock ticks of 10 ms); `None` off Linux.
fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the command name (which is in parentheses).
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// `LDPC_BACKEND`: portable, avx2 or avx512 (default: the fastest here).
fn backend_from_env() -> Option<qkd_postproc::ldpc::Backend> {
    std::env::var("LDPC_BACKEND")
        .ok()
        .filter(|b| !b.is_empty())
        .map(|b| match b.as_str() {
            "portable" => qkd_postproc::ldpc::Backend::Portable,
            "avx2" => qkd_postproc::ldpc::Backend::Avx2,
            "avx512" => qkd_postproc::ldpc::Backend::Avx512,
            other => panic!("LDPC_BACKEND {other}: portable, avx2 or avx512"),
        })
}

/// The frames of the decoder timing tests at `qber`: the plan of the
/// criterion bench (f = 1.45) and `trials` pairs of Bob's LLRs and
/// Alice's syndrome (seed 3).
fn timing_frames(
    cache: &mut CodeCache,
    n: usize,
    qber: f64,
    trials: usize,
) -> (FramePlan, Vec<(Vec<i8>, BitVec)>) {
    let plan = choose_plan(
        cache,
        n,
        SHIPPED_SEED,
        qber,
        RateChoice {
            modulated: 0.1,
            target_efficiency: 1.45,
        },
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let frames = (0..trials)
        .map(|_| {
            let alice = BitVec::random(plan.key_len(), &mut rng);
            let bob = noisy(&alice, qber, &mut rng);
            let frame = plan.alice_frame(&alice, &mut rng).unwrap();
            let llrs = plan
                .bob_llrs(&bob, qkd_postproc::ldpc::channel_magnitude(qber))
                .unwrap();
            (llrs, plan.code().syndrome(&frame))
        })
        .collect();
    (plan, frames)
}

/// A decoder of `plan`'s code with the `LDPC_BACKEND` kernel.
fn timing_decoder(plan: &FramePlan) -> Decoder {
    match backend_from_env() {
        Some(backend) => Decoder::with_backend(plan.code().clone(), backend),
        None => Decoder::new(plan.code().clone()),
    }
}

/// Decoder throughput in key bits per CPU-second of the decoding thread
/// (robust on a shared machine where wall-clock medians swing): the
/// frames of the criterion bench (f = 1.45, n = `LDPC_N`, QBER 2, 3, 5 %),
/// `LDPC_TRIALS` frames decoded `LDPC_ROUNDS` times.
#[test]
#[ignore = "slow: decoder CPU time"]
fn decoder_cpu_time() {
    let n = env("LDPC_N", 65536.0) as usize;
    let trials = env("LDPC_TRIALS", 40.0) as usize;
    let rounds = env("LDPC_ROUNDS", 5.0) as usize;
    let mut cache = CodeCache::new();
    println!(
        "backend {:?}",
        backend_from_env().unwrap_or_else(qkd_postproc::ldpc::Backend::detect)
    );
    println!("n,qber,key_len,frames,cpu_s,mbit_per_cpu_s,iterations_mean,failed,edges,ns_per_edge");
    for qber in [0.02, 0.03, 0.05] {
        let (plan, frames) = timing_frames(&mut cache, n, qber, trials);
        let mut decoder = timing_decoder(&plan);
        let (mut iterations, mut failed) = (0u64, 0u64);
        let start = thread_cpu_seconds().unwrap_or(0.0);
        for _ in 0..rounds {
            for (llrs, syndrome) in &frames {
                let out = decoder.decode(llrs, syndrome, 100).unwrap();
                iterations += u64::from(out.iterations);
                failed += u64::from(!out.converged);
            }
        }
        let cpu = thread_cpu_seconds().unwrap_or(0.0) - start;
        let decoded = (trials * rounds) as f64;
        // CPU time per edge update (one check-to-variable message and its
        // posterior), a figure independent of the code's rate and of the
        // iterations a frame needs.
        let edges = plan.code().edges();
        println!(
            "{n},{qber},{},{},{cpu:.2},{:.2},{:.2},{},{edges},{:.3}",
            plan.key_len(),
            trials * rounds,
            plan.key_len() as f64 * decoded / cpu / 1e6,
            iterations as f64 / decoded,
            failed,
            cpu * 1e9 / (iterations as f64 * edges as f64),
        );
    }
}

/// The decoder timing of [`decoder_cpu_time`] pass by pass, for comparing
/// two builds on a busy machine: each of `LDPC_ROUNDS` passes decodes the
/// `LDPC_TRIALS` frames once and is timed by the wall clock; the fastest
/// pass (the one least disturbed by other processes) and the median are
/// given in key bits per second. `digest` hashes every decoding's
/// decisions, iteration count and `converged`, so that two builds can be
/// checked to decode alike.
#[test]
#[ignore = "slow: decoder timing"]
fn decoder_pass_time() {
    let n = env("LDPC_N", 65536.0) as usize;
    let trials = env("LDPC_TRIALS", 20.0) as usize;
    let rounds = env("LDPC_ROUNDS", 60.0) as usize;
    let mut cache = CodeCache::new();
    println!(
        "backend {:?}",
        backend_from_env().unwrap_or_else(qkd_postproc::ldpc::Backend::detect)
    );
    println!("pass,n,qber,key_len,frames,best_mbit_s,median_mbit_s,iterations_mean,failed,digest");
    for qber in [0.02, 0.03, 0.05] {
        let (plan, frames) = timing_frames(&mut cache, n, qber, trials);
        let mut decoder = timing_decoder(&plan);
        let (mut iterations, mut failed) = (0u64, 0u64);
        let mut digest = 0xcbf2_9ce4_8422_2325u64;
        let mut mix = |x: u64| {
            digest = (digest ^ x).wrapping_mul(0x0100_0000_01b3);
        };
        let mut passes = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let start = std::time::Instant::now();
            for (llrs, syndrome) in &frames {
                let out = decoder.decode(llrs, syndrome, 100).unwrap();
                iterations += u64::from(out.iterations);
                failed += u64::from(!out.converged);
                if round == 0 {
                    mix(u64::from(out.iterations) << 1 | u64::from(out.converged));
                    decoder.decisions().words().iter().for_each(|&w| mix(w));
                }
            }
            passes.push(start.elapsed().as_secs_f64());
        }
        passes.sort_by(f64::total_cmp);
        let bits = (plan.key_len() * trials) as f64;
        println!(
            "pass,{n},{qber},{},{},{:.2},{:.2},{:.2},{failed},{digest:016x}",
            plan.key_len(),
            trials * rounds,
            bits / passes[0] / 1e6,
            bits / passes[rounds / 2] / 1e6,
            iterations as f64 / (trials * rounds) as f64,
        );
    }
}
