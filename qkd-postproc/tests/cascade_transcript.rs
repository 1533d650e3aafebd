//! Pins what Cascade puts on the wire, bit for bit: for fixed keys and
//! seeds, a digest of every message both machines send (in order), Bob's
//! corrected key and the counts. Speed work on the machines must leave
//! every digest unchanged (same questions, same answers, same corrected
//! key, same leak).
//!
//! The digests were taken from the code before the speed work of issue 12
//! (main at 9f30312). If a digest changes, the protocol changed: that is a
//! wire change, not an optimisation.

// On failure the digests got are printed next to the pinned ones.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Instant;

use qkd_core::device::binary_symmetric_channel;
use qkd_core::machine::Machine;
use qkd_core::{BitVec, BlockId};
use qkd_postproc::cascade::{
    CascadeAlice, CascadeBob, CascadeConfig, CascadeEvent, CascadeParams, LeakBudget, ShufflePlan,
    Variant,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// One pair of machines and where their run has got.
struct Run {
    alice: CascadeAlice,
    bob: CascadeBob,
    hash: blake3::Hasher,
    messages: u64,
    outcome: Option<CascadeEvent>,
}

impl Run {
    fn new(
        variant: Variant,
        qber: f64,
        n: usize,
        key_seed: u64,
        plan: &Arc<ShufflePlan>,
        tweak: impl Fn(&mut CascadeParams),
    ) -> Run {
        let mut rng = ChaCha20Rng::seed_from_u64(key_seed);
        let a = BitVec::random(n, &mut rng);
        let b = binary_symmetric_channel(&a, qber, &mut rng).unwrap();
        let mut params = CascadeParams::for_variant(variant, qber.max(0.001), n).unwrap();
        tweak(&mut params);
        let config = CascadeConfig::new(params).with_leak_budget(LeakBudget::PerKeyBit(2.0));
        let block = BlockId::new(key_seed);
        Run {
            alice: CascadeAlice::new(block, a, plan.clone(), &config).unwrap(),
            bob: CascadeBob::new(block, b, plan.clone(), &config).unwrap(),
            hash: blake3::Hasher::new(),
            messages: 0,
            outcome: None,
        }
    }

    fn record(&mut self, from: u8, msg: &[u8]) {
        self.hash.update(&[from]);
        self.hash.update(&(msg.len() as u64).to_be_bytes());
        self.hash.update(msg);
        self.messages += 1;
    }

    /// One turn: everything Bob has to send goes to Alice, then everything
    /// Alice has to send goes to Bob. Returns whether the run has ended.
    fn turn(&mut self, now: Instant) -> bool {
        if self.outcome.is_some() {
            return true;
        }
        while let Some(m) = self.bob.poll_transmit(now) {
            self.record(b'B', &m);
            self.alice.handle_input(now, &m).unwrap();
        }
        while let Some(m) = self.alice.poll_transmit(now) {
            self.record(b'A', &m);
            self.bob.handle_input(now, &m).unwrap();
        }
        while self.alice.poll_event().is_some() {}
        self.outcome = self.bob.poll_event();
        self.outcome.is_some()
    }

    /// The digest of the messages, Bob's key and the counts.
    fn digest(mut self) -> String {
        let outcome = format!("{:?}", self.outcome);
        self.hash.update(outcome.as_bytes());
        self.hash.update(&self.bob.key().to_bytes_lsb());
        self.hash.update(&self.alice.leaked_bits().to_be_bytes());
        self.hash.update(&self.messages.to_be_bytes());
        self.hash.finalize().to_hex()[..16].to_string()
    }
}

fn run_alone(run: Run) -> String {
    let mut run = run;
    let now = Instant::now();
    let mut turns = 0;
    while !run.turn(now) {
        turns += 1;
        assert!(turns < 100_000, "run stalled");
    }
    run.digest()
}

fn plan(n: usize, seed: u64) -> Arc<ShufflePlan> {
    Arc::new(ShufflePlan::new(n, seed).unwrap())
}

#[test]
fn message_sequences_match_the_pinned_digests() {
    type Tweak = fn(&mut CascadeParams);
    let none: Tweak = |_| {};
    let eager: Tweak = |p| p.defer_until_idle = false;
    let waves: Tweak = |p| p.search_waves = 2;
    let cases: [(Variant, f64, usize, u64, Tweak); 22] = [
        (Variant::Original, 0.02, 10_000, 1, none),
        (Variant::Original, 0.1, 4_097, 2, none),
        (Variant::Biconf, 0.02, 10_000, 3, none),
        (Variant::Biconf, 0.05, 777, 4, none),
        (Variant::YanEtAl, 0.02, 10_000, 5, none),
        (Variant::Option3, 0.05, 10_000, 6, none),
        (Variant::Option4, 0.02, 10_000, 7, none),
        (Variant::Option7, 0.01, 10_000, 8, none),
        (Variant::Option7, 0.02, 10_000, 9, none),
        (Variant::Option7, 0.05, 10_000, 10, none),
        (Variant::Option7, 0.1, 1_000, 11, none),
        (Variant::Option7, 0.02, 1 << 16, 12, none),
        (Variant::Option7, 0.03, 1 << 16, 13, none),
        (Variant::Option7, 0.02, 1 << 14, 14, none),
        (Variant::Option7, 0.02, 100_003, 15, none),
        (Variant::Option7, 0.02, 1 << 16, 16, eager),
        (Variant::Option7, 0.02, 1 << 16, 17, waves),
        (Variant::Option8, 0.02, 1 << 14, 18, none),
        (Variant::Option8, 0.02, 1 << 16, 19, eager),
        (Variant::Option8, 0.1, 1 << 14, 20, none),
        (Variant::Option7, 0.0, 1 << 16, 21, none),
        (Variant::Original, 0.02, 1 << 17, 22, waves),
    ];
    let mut got = Vec::new();
    for (variant, qber, n, seed, tweak) in cases {
        let d = run_alone(Run::new(variant, qber, n, seed, &plan(n, seed), tweak));
        got.push(format!("{variant} {qber} {n} {seed}: {d}"));
    }
    let joined = got.join("\n");
    println!("{joined}");
    assert_eq!(joined, PINNED.trim());
}

/// The pipeline's shape: several chunks of 2^16 bits at QBER 2 % with
/// option 7, one shuffle plan shared by all, advanced one turn at a time
/// in lockstep (all chunks' messages of a turn together), and a second
/// block on the same plan afterwards.
#[test]
fn chunks_in_lockstep_on_one_plan_match_the_pinned_digests() {
    let n = 1 << 16;
    let shared = plan(n, 99);
    let now = Instant::now();
    let mut digests = Vec::new();
    for block in 0..2u64 {
        let mut runs: Vec<Run> = (0..4)
            .map(|c| {
                Run::new(
                    Variant::Option7,
                    0.02,
                    n,
                    100 + 10 * block + c,
                    &shared,
                    |_| {},
                )
            })
            .collect();
        let mut turns = 0;
        loop {
            let mut all = true;
            for r in &mut runs {
                all &= r.turn(now);
            }
            if all {
                break;
            }
            turns += 1;
            assert!(turns < 100_000, "runs stalled");
        }
        digests.extend(runs.into_iter().map(Run::digest));
    }
    let joined = digests.join(" ");
    println!("{joined}");
    assert_eq!(joined, PINNED_LOCKSTEP);
}

/// A resend (after Bob's timer) carries exactly the bytes of the first
/// sending, for every round of a run: Bob keeps no copy of his questions
/// and encodes them again, so this checks that nothing they are built from
/// changed while the answers were awaited.
#[test]
fn resent_questions_are_the_bytes_first_sent() {
    for (variant, n, seed) in [
        (Variant::Option7, 1 << 14, 31),
        (Variant::Original, 10_000, 32),
    ] {
        let mut run = Run::new(variant, 0.03, n, seed, &plan(n, seed), |_| {});
        let mut now = Instant::now();
        let mut rounds = 0;
        while let Some(first) = run.bob.poll_transmit(now) {
            now = run.bob.poll_timeout().expect("a resend timer");
            run.bob.handle_timeout(now);
            let again = run.bob.poll_transmit(now).expect("a resend");
            assert_eq!(again, first, "round {rounds}");
            run.alice.handle_input(now, &first).unwrap();
            // Alice answers a repeated round from her cache, without
            // disclosing anything new.
            let leaked = run.alice.leaked_bits();
            run.alice.handle_input(now, &again).unwrap();
            assert_eq!(run.alice.leaked_bits(), leaked);
            let answer = run.alice.poll_transmit(now).expect("an answer");
            let cached = run.alice.poll_transmit(now).expect("the cached answer");
            assert_eq!(cached, answer);
            run.bob.handle_input(now, &answer).unwrap();
            rounds += 1;
        }
        assert!(rounds > 50, "{rounds} rounds");
        assert!(run.bob.is_finished());
        assert_eq!(run.bob.stats().retransmissions, rounds);
    }
}

const PINNED: &str = "
original 0.02 10000 1: 21332fd55799a229
original 0.1 4097 2: faef2bd5521243f9
biconf 0.02 10000 3: 225b917d4b5816f5
biconf 0.05 777 4: b8fe81b98ed2bde8
yanetal 0.02 10000 5: 2b629532ca760a21
option3 0.05 10000 6: 043295472e0894ac
option4 0.02 10000 7: d0cfd05135984e22
option7 0.01 10000 8: 9a261b16b02d79fa
option7 0.02 10000 9: a7bb47e235bebff9
option7 0.05 10000 10: d4da27a3f7234f6a
option7 0.1 1000 11: a619fb70549c349d
option7 0.02 65536 12: a005df47ead6f6a3
option7 0.03 65536 13: f7497f9885473250
option7 0.02 16384 14: eb8d34a1ac44db97
option7 0.02 100003 15: 2aa0f95fdc3ab611
option7 0.02 65536 16: 7235f53152be8365
option7 0.02 65536 17: 8365f096757882c3
option8 0.02 16384 18: 23dc6d40895e1be3
option8 0.02 65536 19: 236ea10df99a8add
option8 0.1 16384 20: c3499831d93b208b
option7 0 65536 21: bf58440d1e4b1a3f
original 0.02 131072 22: 29081874b5f8b8bb
";

const PINNED_LOCKSTEP: &str = "6401a68c81e8ea22 5a305c1a17e5f8a7 f9c1dcfbdddc37bc cea06448a02d4db8 4f0905fb30780b4c 05d7419442bb4e9e 772b17952b89d40e 637edb5e2abcee79";
