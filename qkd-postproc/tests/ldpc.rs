//! LDPC reconciliation: codes pinned by hash, alist round trips and hostile
//! files, the AVX2 kernel against the portable one, and the correctness and
//! leakage properties of reconciliation.

use std::sync::Arc;

use proptest::prelude::*;
use qkd_core::BitVec;
use qkd_postproc::ldpc::{
    Backend, CheckRule, CodeCache, CodeSpec, Decoder, FramePlan, LdpcCode, LdpcError, MotherRate,
    RateChoice, SHIPPED_SEED, Settings, Variant, channel_magnitude, choose_guided_plan,
    choose_plan, read_alist, reconcile_in_memory, write_alist,
};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

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

fn hash(code: &LdpcCode) -> String {
    blake3::hash(&code.canonical_bytes()).to_hex()[..16].to_string()
}

/// The shipped codes (seed [`SHIPPED_SEED`]) at 2^12 and 2^16 bits, one
/// per rung: the first 16 hex digits of BLAKE3 over the canonical matrix.
/// A change of the construction changes these and must be deliberate
/// (last change: the 0.922 rung, for guided reconciliation only, was
/// added at the end; nothing else changed. The change before: the 0.85
/// rung got a profile chosen by decoding blind
/// frames (`decoded_local_search` in `tests/ldpc_design.rs`), so its
/// hashes changed, and the 0.914 rung was added at the end; the
/// construction and the other rungs did not change. The change before:
/// the rungs 0.85 and 0.9 got profiles chosen by the Monte-Carlo density
/// evolution of `tests/ldpc_design.rs` and decoding 2^17-bit frames. The
/// one before: the rungs 0.75, 0.8, 0.85 and 0.9 got designed profiles
/// instead of Elkouss et al. 2009's Table I).
const PINNED: [(usize, [&str; 11]); 2] = [
    (
        1 << 12,
        [
            "c6499efa90e30e98",
            "61b706986c05b0fe",
            "f67b8506bf5d2634",
            "b34b970fcb6fb689",
            "6425e008ea4310bf",
            "8a29963da18f73f2",
            "d6bdf05f19e0298b",
            "506d78fffe12aed8",
            "6e9480ae34ab3643",
            "e3159e012f1b4076",
            "a45e895153168064",
        ],
    ),
    (
        1 << 16,
        [
            "739cbbec209afd87",
            "e95fa8bb9ebfc24b",
            "65103c16e3a2c8ba",
            "c4d9b01b39c5c77a",
            "a30722ed936c0ea9",
            "d6627029b951b0b2",
            "a1e15b252f4bf549",
            "adf607280105ec84",
            "732724731e5957d7",
            "6f0b25446e3aed38",
            "c688f1e6760bc87c",
        ],
    ),
];

#[test]
fn shipped_codes_are_pinned() {
    let mut seen = Vec::new();
    let mut want = Vec::new();
    assert_eq!(MotherRate::ladder().count(), PINNED[0].1.len());
    for (n, hashes) in PINNED {
        for (rate, pinned) in MotherRate::ladder().zip(hashes) {
            let code = LdpcCode::build(CodeSpec {
                rate,
                n,
                seed: SHIPPED_SEED,
            })
            .unwrap();
            seen.push(hash(&code));
            want.push(pinned.to_string());
        }
    }
    assert_eq!(seen, want);
}

#[test]
fn same_seed_same_code_other_seed_other_code() {
    let spec = CodeSpec {
        rate: MotherRate::from_index(4).unwrap(),
        n: 1 << 13,
        seed: 11,
    };
    let a = LdpcCode::build(spec).unwrap();
    assert_eq!(a, LdpcCode::build(spec).unwrap());
    assert_ne!(a, LdpcCode::build(CodeSpec { seed: 12, ..spec }).unwrap());
    let mut cache = CodeCache::new();
    let first = cache.get(spec).unwrap();
    assert!(Arc::ptr_eq(&first, &cache.get(spec).unwrap()));
    assert_eq!(cache.len(), 1);
}

#[test]
fn built_codes_have_their_shape() {
    for rate in MotherRate::ladder() {
        let code = LdpcCode::build(CodeSpec {
            rate,
            n: 1 << 12,
            seed: 3,
        })
        .unwrap();
        assert_eq!(code.n(), 4096);
        assert!((code.rate() - rate.rate()).abs() < 1e-12);
        // Every variable is in at least two checks, every check row
        // of the base matrix differs from the others by at most one edge.
        let degrees: Vec<usize> = (0..code.base_rows()).map(|r| code.row(r).len()).collect();
        let (lo, hi) = (degrees.iter().min().unwrap(), degrees.iter().max().unwrap());
        assert!(
            hi - lo <= 2,
            "rate {:.3}: row degrees {lo}..{hi}",
            code.rate()
        );
        // Untainted positions: no check sees two of them.
        let untainted = &code.puncture_order()[..code.untainted()];
        let mut marked = vec![false; code.n()];
        for &v in untainted {
            marked[v as usize] = true;
        }
        for i in 0..code.m() {
            assert!(
                code.check(i)
                    .iter()
                    .filter(|&&v| marked[v as usize])
                    .count()
                    <= 1
            );
        }
        assert!(code.untainted() > code.m() / 4);
    }
    for bad in [1000, 1 << 21, 1024 + 64, 0] {
        let spec = CodeSpec {
            rate: MotherRate::from_index(0).unwrap(),
            n: bad,
            seed: 0,
        };
        assert!(matches!(
            LdpcCode::build(spec),
            Err(LdpcError::Config { .. })
        ));
    }
}

#[test]
fn alist_round_trip_keeps_the_matrix() {
    let code = LdpcCode::build(CodeSpec {
        rate: MotherRate::from_index(6).unwrap(),
        n: 1 << 12,
        seed: 5,
    })
    .unwrap();
    let text = write_alist(&code);
    let back = read_alist(&text, 5).unwrap();
    assert_eq!(back.canonical_bytes(), code.canonical_bytes());
    assert_eq!(hash(&back), hash(&code));
    assert_eq!(write_alist(&back), text);
}

/// MacKay's alist of the (7,4) Hamming code as other tools write it (no
/// zero padding, column lists first).
const HAMMING_ALIST: &str =
    "7 3\n3 4\n1 1 1 2 2 2 3\n4 4 4\n1\n2\n3\n1 2\n1 3\n2 3\n1 2 3\n1 4 5 7\n2 4 6 7\n3 5 6 7\n";

#[test]
fn foreign_alist_loads_and_decodes() {
    let code = read_alist(HAMMING_ALIST, 0).unwrap();
    assert_eq!((code.n(), code.m(), code.edges()), (7, 3, 12));
    assert_eq!(code.check(0), vec![0, 3, 4, 6]);
    // The null space has 2^(7−3) = 16 words: the matrix has full rank 3.
    let words = (0u64..128)
        .filter(|&w| {
            code.syndrome(&BitVec::from_words(vec![w], 7).unwrap())
                .count_ones()
                == 0
        })
        .count();
    assert_eq!(words, 16);
    // A frame without errors decodes at once.
    let code = Arc::new(code);
    let plan = FramePlan::new(Arc::clone(&code), 0, 0).unwrap();
    let mut decoder = Decoder::new(Arc::clone(&code));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let alice = BitVec::random(7, &mut rng);
    let settings = Settings {
        qber: 0.1,
        variant: Variant::RateAdaptive,
        max_iterations: 20,
    };
    let out = reconcile_in_memory(&plan, &mut decoder, &alice, &alice, settings, &mut rng).unwrap();
    assert!(out.converged && out.keys_equal && out.iterations == 0);
}

#[test]
fn hostile_alists_are_errors() {
    let cases: [&str; 12] = [
        "",
        "7",
        "7 3\n3 4\n",
        "99999999999 3\n3 4\n",
        "16777217 1\n1 1\n",
        "7 3\n3 4\n1 1 1 2 2 2 3\n4 4 4\n1\n2\n3\n1 2\n1 3\n2 3\n1 2 3\n1 4 5 7\n2 4 6 7\n3 5 6 8\n",
        "7 3\n3 4\n1 1 1 2 2 2 3\n4 4 4\n1\n2\n3\n1 2\n1 3\n2 3\n1 2 3\n1 4 5 7\n2 4 6 7\n3 5 6 6\n",
        "7 3\n3 4\n1 1 1 2 2 2 3\n4 4 4\n1\n2\n3\n1 2\n1 3\n2 3\n1 2 3\n1 4 5 7\n2 4 6 7\n",
        "7 3\n3 4\n1 1 1 2 2 2 3\n4 4 4\n1\n2\n3\n1 2\n1 3\n2 3\n1 2 3\n1 4 5 7\n2 4 6 7\n3 5 6 7\n9\n",
        "7 3\n3 4\n1 1 1 2 2 2 3\n4 4 4\n2\n2\n3\n1 2\n1 3\n2 3\n1 2 3\n1 4 5 7\n2 4 6 7\n3 5 6 7\n",
        "7 3\n3 4\n1 1 1 2 2 2 -3\n4 4 4\n1\n2\n3\n1 2\n1 3\n2 3\n1 2 3\n1 4 5 7\n2 4 6 7\n3 5 6 7\n",
        "3 3\n1 1\n1 1 1\n1 1 1\n1\n2\n3\n1\n2\n3\n",
    ];
    for (i, text) in cases.iter().enumerate() {
        assert!(read_alist(text, 0).is_err(), "case {i} was accepted");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random bytes and random edits of a valid file never panic the reader.
    #[test]
    fn alist_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                                 edits in proptest::collection::vec((0usize..120, any::<u8>()), 0..6)) {
        let _ = read_alist(&String::from_utf8_lossy(&bytes), 0);
        let mut text = HAMMING_ALIST.as_bytes().to_vec();
        for (at, b) in edits {
            let at = at % text.len();
            text[at] = b"0123456789 \n"[usize::from(b) % 12];
        }
        if let Ok(code) = read_alist(&String::from_utf8_lossy(&text), 0) {
            prop_assert!(code.m() < code.n());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// The vectorised decoders (AVX2, AVX-512, NEON: each where the CPU has
    /// it, else the portable kernel) give exactly the portable decoder's
    /// posteriors and outcome, with either check rule, on codes whose
    /// lifting is and is not a multiple of 32 lanes.
    #[test]
    fn vectorised_decoder_matches_portable(seed in any::<u64>(), rung in 0u8..9, n_mult in 4usize..72,
                                           qber in 0.005f64..0.12, iterations in 1u32..30,
                                           min_sum in any::<bool>(), message_max in 1u8..=127) {
        // 256 base columns: Z from 4 to 71, below and above one AVX2
        // vector of 32 lanes.
        let n = 256 * n_mult;
        let code = Arc::new(LdpcCode::build(CodeSpec { rate: MotherRate::from_index(rung).unwrap(), n, seed }).unwrap());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let key = BitVec::random(n, &mut rng);
        let bob = noisy(&key, qber, &mut rng);
        let syndrome = code.syndrome(&key);
        let magnitude = qkd_postproc::ldpc::channel_magnitude(qber);
        let mut llrs: Vec<i8> = (0..n).map(|i| if bob.get(i) { -magnitude } else { magnitude }).collect();
        // Some punctured and shortened positions.
        for (k, &v) in code.puncture_order().iter().take(n / 20).enumerate() {
            llrs[v as usize] = if k % 2 == 0 { 0 } else if key.get(v as usize) { -127 } else { 127 };
        }
        let mut portable = Decoder::with_backend(Arc::clone(&code), Backend::Portable);
        if min_sum {
            portable.set_rule(CheckRule::MinSum);
        }
        portable.set_message_max(message_max).unwrap();
        let a = portable.decode(&llrs, &syndrome, iterations).unwrap();
        for backend in [Backend::Avx2, Backend::Avx512, Backend::Neon] {
            let mut fast = Decoder::with_backend(Arc::clone(&code), backend);
            if min_sum {
                fast.set_rule(CheckRule::MinSum);
            }
            fast.set_message_max(message_max).unwrap();
            let b = fast.decode(&llrs, &syndrome, iterations).unwrap();
            prop_assert_eq!(a, b);
            prop_assert_eq!(portable.posteriors(), fast.posteriors());
        }
    }

    /// Whenever Bob's decoder converges his key equals Alice's, and the
    /// leakage is exactly m − p + revealed with revealed a whole number of
    /// steps (capped by the reveal budget).
    #[test]
    fn converged_means_equal_keys_and_leakage_is_counted(seed in any::<u64>(), qber in 0.01f64..0.10,
                                                         blind in any::<bool>(), f in 1.0f64..1.15) {
        let mut cache = CodeCache::new();
        let n = 1 << 12;
        let plan = choose_plan(&mut cache, n, SHIPPED_SEED, qber, RateChoice { modulated: 0.1, target_efficiency: f }).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let alice = BitVec::random(plan.key_len(), &mut rng);
        let bob = noisy(&alice, qber, &mut rng);
        let step = 40;
        let variant = if blind { Variant::Blind { step, max_rounds: 30 } } else { Variant::RateAdaptive };
        let mut decoder = Decoder::new(Arc::clone(plan.code()));
        let settings = Settings { qber, variant, max_iterations: 50 };
        let out = reconcile_in_memory(&plan, &mut decoder, &alice, &bob, settings, &mut rng).unwrap();
        if out.converged {
            prop_assert!(out.keys_equal);
        }
        prop_assert_eq!(out.leaked_bits, plan.code().m() - plan.punctured() + out.revealed);
        let rounds = out.rounds as usize;
        prop_assert!(out.revealed == ((rounds - 1) * step).min(plan.max_reveal()));
        if !blind {
            prop_assert_eq!(out.rounds, 1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Guided reconciliation: a converged decoding gives Alice's key, the
    /// leakage is m + revealed (no punctured position), and every round but
    /// the last reveals `step` bits while enough are left. (On 2^13-bit
    /// frames one case, QBER 1.34 % on the 0.898 rung, converged to another
    /// word, which confirmation catches; kept in the regressions file. At
    /// 2^14 and above the measured runs had none.)
    #[test]
    fn guided_converged_means_equal_keys_and_leakage_is_counted(seed in any::<u64>(), qber in 0.01f64..0.10,
                                                               f in 1.0f64..1.1) {
        let mut cache = CodeCache::new();
        let n = 1 << 14;
        let plan = choose_guided_plan(&mut cache, n, SHIPPED_SEED, qber, RateChoice { modulated: 0.1, target_efficiency: f }).unwrap();
        prop_assert_eq!(plan.punctured(), 0);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let alice = BitVec::random(plan.key_len(), &mut rng);
        let bob = noisy(&alice, qber, &mut rng);
        let step = 24;
        let mut decoder = Decoder::new(Arc::clone(plan.code()));
        let settings = Settings { qber, variant: Variant::Guided { step, max_rounds: 200, resume_iterations: 20 }, max_iterations: 50 };
        let out = reconcile_in_memory(&plan, &mut decoder, &alice, &bob, settings, &mut rng).unwrap();
        if out.converged {
            prop_assert!(out.keys_equal);
        }
        prop_assert_eq!(out.leaked_bits, plan.code().m() + out.revealed);
        prop_assert!(out.revealed <= plan.max_reveal());
        prop_assert!(out.revealed == ((out.rounds as usize - 1) * step).min(plan.max_reveal()));
    }

    /// What makes guided requests safe to count as the revealed bits only:
    /// without punctured positions the decoder's posterior magnitudes after
    /// a failed decoding (and so the positions Bob names) are the same for
    /// Alice's key `a` with Bob's `a ⊕ e` as for the all-zero key with
    /// Bob's `e`: they depend on the error pattern alone. Checked bit for
    /// bit, on every backend and every rung (the guided 0.922 one
    /// included), over three rounds of requests, reveals and resumes.
    /// (Whether a decoding stops early can differ: a posterior of exactly 0
    /// decides 0 in both problems, which is not the same bit. That is the
    /// round's success, one bit, which blind reconciliation discloses too;
    /// a found case is kept in `ldpc.proptest-regressions`.)
    #[test]
    fn guided_requests_depend_on_the_errors_alone(seed in any::<u64>(), qber in 0.01f64..0.12, rung in 0u8..11) {
        let mut cache = CodeCache::new();
        let n = 1 << 12;
        let rate = MotherRate::from_index(rung).unwrap();
        let plan = FramePlan::for_rung(&mut cache, CodeSpec { rate, n, seed: SHIPPED_SEED }, 0, 200).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = BitVec::random(plan.key_len(), &mut rng);
        let b = noisy(&a, qber, &mut rng);
        let mut e = a.clone();
        e ^= &b;
        let zero = BitVec::zeros(plan.key_len());
        let magnitude = channel_magnitude(qber);
        let frame_a = plan.alice_frame(&a, &mut rng).unwrap();
        let syndrome_a = plan.syndrome(&frame_a).unwrap();
        let syndrome_0 = plan.syndrome(&plan.alice_frame(&zero, &mut rng).unwrap()).unwrap();
        for backend in [Backend::Portable, Backend::Avx2, Backend::Avx512, Backend::Neon] {
            if !backend.is_available() {
                continue;
            }
            let mut with_key = Decoder::with_backend(Arc::clone(plan.code()), backend);
            let mut without = Decoder::with_backend(Arc::clone(plan.code()), backend);
            let llrs_key = plan.bob_llrs(&b, magnitude).unwrap();
            let llrs_errors = plan.bob_llrs(&e, magnitude).unwrap();
            let mut one = with_key.decode(&llrs_key, &syndrome_a, 7).unwrap();
            let mut two = without.decode(&llrs_errors, &syndrome_0, 7).unwrap();
            let mut known = BitVec::zeros(n);
            for round in 0..3 {
                if one.converged || two.converged {
                    // No request follows a converged decoding.
                    break;
                }
                let magnitudes = |d: &Decoder| -> Vec<u16> { d.posteriors().iter().map(|p| p.unsigned_abs()).collect() };
                prop_assert!(magnitudes(&with_key) == magnitudes(&without), "{:?} round {}", backend, round);
                let asked = plan.least_reliable(with_key.posteriors(), &known, 40).unwrap();
                prop_assert_eq!(&asked, &plan.least_reliable(without.posteriors(), &known, 40).unwrap());
                // Alice reveals her bits: a's in the one problem, zeros in
                // the other.
                let (mut c1, mut c2) = (Vec::new(), Vec::new());
                for &v in &asked {
                    let v = v as usize;
                    known.set(v, true);
                    c1.push((v, llrs_key[v], if frame_a.get(v) { -127 } else { 127 }));
                    c2.push((v, llrs_errors[v], 127));
                }
                one = with_key.resume(&c1, 5).unwrap();
                two = without.resume(&c2, 5).unwrap();
            }
        }
    }
}

/// `resume` continues a decoding exactly: k iterations then `resume` with
/// no change for m more give the posteriors of k + m iterations, on every
/// backend; a reveal moves the posterior by the change of its LLR; and
/// there is nothing to resume before a decoding or after the rule changed.
#[test]
fn resume_continues_a_decoding_exactly() {
    let mut cache = CodeCache::new();
    let n = 1 << 13;
    let rate = MotherRate::from_index(6).unwrap();
    let plan = FramePlan::for_rung(
        &mut cache,
        CodeSpec {
            rate,
            n,
            seed: SHIPPED_SEED,
        },
        0,
        0,
    )
    .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let qber = 0.045;
    let a = BitVec::random(plan.key_len(), &mut rng);
    let b = noisy(&a, qber, &mut rng);
    let syndrome = plan
        .syndrome(&plan.alice_frame(&a, &mut rng).unwrap())
        .unwrap();
    let llrs = plan.bob_llrs(&b, channel_magnitude(qber)).unwrap();
    for backend in [
        Backend::Portable,
        Backend::Avx2,
        Backend::Avx512,
        Backend::Neon,
    ] {
        if !backend.is_available() {
            continue;
        }
        for rule in [CheckRule::SumProduct, CheckRule::MinSum] {
            let mut decoder = Decoder::with_backend(Arc::clone(plan.code()), backend);
            decoder.set_rule(rule);
            assert!(decoder.resume(&[], 1).is_err());
            let whole = decoder.decode(&llrs, &syndrome, 9).unwrap();
            assert!(
                !whole.converged,
                "{backend:?} {rule:?}: pick a harder frame"
            );
            let want = decoder.posteriors().to_vec();
            decoder.decode(&llrs, &syndrome, 4).unwrap();
            let more = decoder.resume(&[], 5).unwrap();
            assert_eq!(more.iterations, 5);
            assert!(
                decoder.posteriors() == want.as_slice(),
                "{backend:?} {rule:?}"
            );
            // A reveal: the posterior moves by KNOWN − (old LLR).
            let v = 17;
            let before = decoder.posteriors()[v];
            let bit = if a.get(v) { -127 } else { 127 };
            decoder.resume(&[(v, llrs[v], bit)], 0).unwrap();
            let start = i32::from(bit.signum()) * 16_384;
            assert_eq!(
                i32::from(decoder.posteriors()[v]),
                (i32::from(before) - i32::from(llrs[v]) + start).clamp(-32767, 32767)
            );
            assert!(decoder.resume(&[(n, 0, 127)], 1).is_err());
            decoder.set_rule(rule);
            assert!(decoder.resume(&[], 1).is_err());
            // A decoding refused for its length leaves nothing to resume.
            decoder.decode(&llrs, &syndrome, 2).unwrap();
            assert!(decoder.decode(&llrs[1..], &syndrome, 2).is_err());
            assert!(decoder.resume(&[], 1).is_err());
        }
    }
}

#[test]
fn guided_plans_are_unpunctured_and_blind_plans_never_take_the_guided_rung() {
    let mut cache = CodeCache::new();
    let n = 1 << 17;
    let choice = RateChoice {
        modulated: 0.1,
        target_efficiency: 1.0,
    };
    for q in [0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.1, 0.11] {
        let guided = choose_guided_plan(&mut cache, n, SHIPPED_SEED, q, choice).unwrap();
        assert_eq!(guided.punctured(), 0, "{q}");
        assert!(guided.shortened() <= n / 10, "{q}");
        let start = guided.code().m() as f64 / (guided.key_len() as f64 * qkd_core::h2(q));
        // At the start asked for, or near it with none or all of the
        // modulated share shortened (the rungs are apart).
        let all = (n as f64 * 0.1).round() as usize;
        let ends = guided.shortened() == 0 || guided.shortened() == all;
        // (Below QBER 1 % even the top rung starts above: it serves them
        // unshortened.)
        let top = MotherRate::ladder().last();
        assert!(
            (start - 1.0).abs() < 0.001
                || (ends && (start - 1.0).abs() < 0.1)
                || (q < 0.01 && start > 1.0 && guided.rung() == top && guided.shortened() == 0),
            "{q}: {start}"
        );
        for f in [1.0, 1.02, 1.1, 1.3] {
            if let Ok(plan) = choose_plan(
                &mut cache,
                n,
                SHIPPED_SEED,
                q,
                RateChoice {
                    target_efficiency: f,
                    ..choice
                },
            ) {
                assert!(!plan.rung().unwrap().guided_only(), "{q} {f}");
            }
        }
    }
    // QBER 1 % takes the guided rung; the machines and the in-memory run
    // refuse a guided reconciliation of a punctured plan.
    let one = choose_guided_plan(&mut cache, n, SHIPPED_SEED, 0.01, choice).unwrap();
    assert!(one.rung().unwrap().guided_only());
    // Above about 11 % every rung starts far below f = 1: refused.
    assert!(choose_guided_plan(&mut cache, n, SHIPPED_SEED, 0.2, choice).is_err());
    // Down to 2^14-bit frames (one of 200 at 2^12 converged wrong).
    let short = choose_guided_plan(&mut cache, 1 << 14, SHIPPED_SEED, 0.01, choice).unwrap();
    assert!(short.rung().unwrap().guided_only());
    let shorter = choose_guided_plan(&mut cache, 1 << 13, SHIPPED_SEED, 0.01, choice).unwrap();
    assert!(shorter.rung().unwrap().rate() < 0.9);
    let punctured = choose_plan(&mut cache, 1 << 12, SHIPPED_SEED, 0.03, choice).unwrap();
    assert!(punctured.punctured() > 0);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let key = BitVec::random(punctured.key_len(), &mut rng);
    let settings = Settings {
        qber: 0.03,
        variant: Variant::Guided {
            step: 10,
            max_rounds: 10,
            resume_iterations: 20,
        },
        max_iterations: 10,
    };
    let mut decoder = Decoder::new(Arc::clone(punctured.code()));
    assert!(matches!(
        reconcile_in_memory(&punctured, &mut decoder, &key, &key, settings, &mut rng),
        Err(LdpcError::Config {
            field: "ldpc.variant",
            ..
        })
    ));
}

#[test]
fn blind_rounds_rescue_a_frame_the_first_syndrome_cannot() {
    // Aim the syndrome at f = 1.0 (below what any decoder reaches): the
    // first round fails, the reveals bring it home.
    let mut cache = CodeCache::new();
    let qber = 0.05;
    let plan = choose_plan(
        &mut cache,
        1 << 14,
        SHIPPED_SEED,
        qber,
        RateChoice {
            modulated: 0.1,
            target_efficiency: 1.0,
        },
    )
    .unwrap();
    let mut decoder = Decoder::new(Arc::clone(plan.code()));
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let alice = BitVec::random(plan.key_len(), &mut rng);
    let bob = noisy(&alice, qber, &mut rng);
    let settings = Settings {
        qber,
        variant: Variant::Blind {
            step: 100,
            max_rounds: 60,
        },
        max_iterations: 60,
    };
    let out = reconcile_in_memory(&plan, &mut decoder, &alice, &bob, settings, &mut rng).unwrap();
    assert!(out.converged && out.keys_equal);
    assert!(out.rounds > 1);
    let rate_adaptive = Settings {
        variant: Variant::RateAdaptive,
        ..settings
    };
    assert!(
        !reconcile_in_memory(&plan, &mut decoder, &alice, &bob, rate_adaptive, &mut rng)
            .unwrap()
            .converged
    );
}

/// At a generous f = 1.45 on the rate-0.8 rung (n = 2^14, QBER 1.5 %,
/// the split of 10 % modulated positions `choose_plan` made before the
/// designed rungs moved 1.5 % to the 0.85 rung) every frame decodes. With
/// 8-bit posteriors 2 % of these frames diverged (thousands of wrong bits:
/// a clipped posterior undone by one message); the 16-bit posteriors
/// removed them.
#[test]
fn no_frame_diverges_at_generous_efficiency() {
    let mut cache = CodeCache::new();
    let qber = 0.015;
    let n = 1usize << 14;
    let rate = MotherRate::from_index(6).unwrap();
    let d = n / 10;
    let need = 1.45 * qkd_core::h2(qber) * (n - d) as f64;
    let punctured = ((1.0 - rate.rate()) * n as f64 - need).round() as usize;
    let spec = CodeSpec {
        rate,
        n,
        seed: SHIPPED_SEED,
    };
    let plan = FramePlan::for_rung(&mut cache, spec, punctured, d - punctured).unwrap();
    assert_eq!(plan.code().rate().mul_add(10.0, 0.5).floor(), 8.0);
    let mut decoder = Decoder::new(Arc::clone(plan.code()));
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let settings = Settings {
        qber,
        variant: Variant::RateAdaptive,
        max_iterations: 100,
    };
    let mut wrong = Vec::new();
    for frame in 0..150 {
        let alice = BitVec::random(plan.key_len(), &mut rng);
        let bob = noisy(&alice, qber, &mut rng);
        let out =
            reconcile_in_memory(&plan, &mut decoder, &alice, &bob, settings, &mut rng).unwrap();
        if !out.keys_equal {
            let bits = plan.key_of(&decoder.decisions()).hamming_distance(&alice);
            wrong.push((frame, bits));
        }
    }
    assert!(
        wrong.is_empty(),
        "frames not decoded (frame, wrong bits): {wrong:?}"
    );
}

#[test]
fn message_max_is_checked() {
    let code = Arc::new(
        LdpcCode::build(CodeSpec {
            rate: MotherRate::from_index(0).unwrap(),
            n: 1 << 12,
            seed: SHIPPED_SEED,
        })
        .unwrap(),
    );
    let mut decoder = Decoder::new(code);
    assert!(decoder.set_message_max(0).is_err());
    assert!(decoder.set_message_max(128).is_err());
    assert!(decoder.set_message_max(1).is_ok());
    assert!(decoder.set_message_max(127).is_ok());
}

/// Channel LLRs are in steps of 1/8 nat; 127 is kept for known bits.
#[test]
fn channel_magnitudes() {
    use qkd_postproc::ldpc::channel_magnitude;
    assert_eq!(channel_magnitude(0.10), 18);
    assert_eq!(channel_magnitude(0.01), 37);
    assert_eq!(channel_magnitude(0.0), 126);
    assert_eq!(channel_magnitude(1e-12), 126);
    assert_eq!(channel_magnitude(0.5), 1);
    assert_eq!(channel_magnitude(f64::NAN), 1);
}

/// The AVX2 and AVX-512 decoders on the liftings the shipped frame lengths
/// use (Z = 32, 64, 128, 192 and 256: whole vectors, which the property test above
/// rarely draws; the AVX-512 kernel runs on all but 32): the same
/// posteriors and outcome as the portable decoder, every rung, rounds that
/// converge and rounds that do not.
#[test]
fn avx2_matches_portable_on_shipped_liftings() {
    if !Backend::Avx2.is_available() {
        return;
    }
    for (n, qber) in [
        (1 << 13, 0.03),
        (1 << 14, 0.06),
        (1 << 15, 0.04),
        (3 << 14, 0.05),
        (1 << 16, 0.02),
    ] {
        for rung in MotherRate::ladder() {
            let code = Arc::new(
                LdpcCode::build(CodeSpec {
                    rate: rung,
                    n,
                    seed: SHIPPED_SEED,
                })
                .unwrap(),
            );
            let mut rng = ChaCha8Rng::seed_from_u64(u64::from(rung.index()));
            let key = BitVec::random(n, &mut rng);
            let bob = noisy(&key, qber, &mut rng);
            let magnitude = qkd_postproc::ldpc::channel_magnitude(qber);
            let mut llrs: Vec<i8> = (0..n)
                .map(|i| if bob.get(i) { -magnitude } else { magnitude })
                .collect();
            for (k, &v) in code.puncture_order().iter().take(n / 20).enumerate() {
                llrs[v as usize] = match (k % 2, key.get(v as usize)) {
                    (0, _) => 0,
                    (_, true) => -127,
                    (_, false) => 127,
                };
            }
            let syndrome = code.syndrome(&key);
            let mut portable = Decoder::with_backend(Arc::clone(&code), Backend::Portable);
            for iterations in [3, 40] {
                let a = portable.decode(&llrs, &syndrome, iterations).unwrap();
                for backend in [Backend::Avx2, Backend::Avx512] {
                    let mut fast = Decoder::with_backend(Arc::clone(&code), backend);
                    let b = fast.decode(&llrs, &syndrome, iterations).unwrap();
                    assert_eq!(a, b, "n={n} rung={} {backend:?}", rung.index());
                    assert!(portable.posteriors() == fast.posteriors());
                }
            }
        }
    }
}

/// A decoder's `Debug` shows its code and settings, never the posteriors
/// or messages it holds (they are derived from Bob's key).
#[test]
fn decoder_debug_shows_no_key_material() {
    let code = Arc::new(
        LdpcCode::build(CodeSpec {
            rate: MotherRate::from_index(4).unwrap(),
            n: 4096,
            seed: 1,
        })
        .unwrap(),
    );
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let key = BitVec::random(4096, &mut rng);
    let bob = noisy(&key, 0.02, &mut rng);
    let syndrome = code.syndrome(&key);
    let magnitude = qkd_postproc::ldpc::channel_magnitude(0.02);
    let llrs: Vec<i8> = (0..4096)
        .map(|i| if bob.get(i) { -magnitude } else { magnitude })
        .collect();
    let mut decoder = Decoder::new(Arc::clone(&code));
    decoder.decode(&llrs, &syndrome, 40).unwrap();
    let shown = format!("{decoder:?}");
    assert!(shown.starts_with("Decoder {"), "{shown}");
    assert!(shown.len() < 200, "{shown}");
    assert!(
        !shown.contains("posterior") && !shown.contains("messages"),
        "{shown}"
    );
}
