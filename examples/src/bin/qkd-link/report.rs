//! What `qkd-link` prints: the live progress line on stderr, one JSON
//! object per block (`--format json`), warnings, and the totals.
//!
//! JSON objects, one per line on stdout:
//!
//! - `{"type":"block","side":"alice", <every field of BlockReport>}` for a
//!   kept block; a dropped one also has `"stage"` and `"reason"`.
//!   `BlockReport` (qkd_postproc::pipeline) holds the block, outcome,
//!   sifted/sample/key bits, sample errors, QBER and its bound, leaked
//!   bits, confirmation tag bits, `eps_sec`/`eps_cor`/`eps_pe`, final bits
//!   and their split between the authentication pool and the key handed out.
//! - `{"type":"totals","side":"alice", <every field of PipelineStats>, ...}`
//!   at the end, with the QBER, the secret key rate, the sifted throughput,
//!   the authentication key left and the key file.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use qkd_core::Role;
use qkd_postproc::pipeline::{BlockReport, PipelineStats};
use serde_json::{Value, json};

use crate::net::role_name;
use crate::side::{Ending, Summary};

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// A progress line while running and the totals at the end.
    #[default]
    Text,
    /// One JSON object per block and one for the totals of each side.
    Json,
}

/// The live numbers of up to two sides, drawn on stderr when it is a terminal.
pub(crate) struct Progress {
    sides: Mutex<[Option<(PipelineStats, u64)>; 2]>,
    bar: ProgressBar,
}

impl Progress {
    /// A progress line, redrawn every 200 ms by a thread of its own.
    pub(crate) fn start() -> Arc<Self> {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
            bar.set_style(style);
        }
        let progress = Arc::new(Progress {
            sides: Mutex::new([None, None]),
            bar,
        });
        let weak = Arc::downgrade(&progress);
        thread::spawn(move || {
            while let Some(p) = weak.upgrade() {
                p.draw();
                drop(p);
                thread::sleep(Duration::from_millis(200));
            }
        });
        progress
    }

    /// Records a side's current totals.
    pub(crate) fn update(&self, role: Role, stats: &PipelineStats, auth_key_left: u64) {
        if let Ok(mut sides) = self.sides.lock() {
            sides[index(role)] = Some((stats.clone(), auth_key_left));
        }
    }

    fn draw(&self) {
        let Ok(sides) = self.sides.lock() else { return };
        let parts: Vec<String> = [Role::Alice, Role::Bob]
            .into_iter()
            .filter_map(|r| {
                sides[index(r)].as_ref().map(|(s, left)| {
                    format!(
                        "{}: {} blocks ({} dropped), QBER {:.2} %, {} secret, auth key left {}",
                        role_name(r),
                        s.blocks_kept,
                        s.blocks_dropped,
                        100.0 * s.qber(),
                        rate(s.secret_key_rate()),
                        bits(*left as f64),
                    )
                })
            })
            .collect();
        self.bar.set_message(parts.join(" | "));
        self.bar.tick();
    }

    /// Removes the line.
    pub(crate) fn clear(&self) {
        self.bar.finish_and_clear();
    }
}

fn index(role: Role) -> usize {
    match role {
        Role::Alice => 0,
        Role::Bob => 1,
    }
}

/// One block's line (JSON only; text mode reports drops as warnings).
pub(crate) fn block(
    format: Format,
    role: Role,
    stats: &BlockReport,
    dropped: Option<(String, String)>,
) {
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(stats).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut v {
                map.insert("type".into(), json!("block"));
                map.insert("side".into(), json!(role_name(role)));
                if let Some((stage, reason)) = &dropped {
                    map.insert("stage".into(), json!(stage));
                    map.insert("reason".into(), json!(reason));
                }
            }
            println!("{v}");
        }
        Format::Text => {
            if let Some((stage, reason)) = dropped {
                warn(
                    role,
                    &format!("block {} dropped in {stage}: {reason}", stats.block),
                );
            }
        }
    }
}

/// A warning on stderr.
pub(crate) fn warn(role: Role, message: &str) {
    eprintln!("{}: {message}", role_name(role));
}

/// The totals of one side.
pub(crate) fn totals(format: Format, s: &Summary) {
    let st = &s.stats;
    let processed = st.sifted_bits + st.dropped_sifted_bits;
    let sifted_rate = (st.elapsed_s > 0.0).then(|| processed as f64 / st.elapsed_s);
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(st).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut v {
                map.insert("type".into(), json!("totals"));
                map.insert("side".into(), json!(role_name(s.role)));
                map.insert(
                    "ending".into(),
                    json!(match s.ending {
                        Ending::Completed => "completed",
                        Ending::Interrupted => "interrupted",
                    }),
                );
                map.insert("qber".into(), json!(st.qber()));
                map.insert("secret_key_rate_bps".into(), json!(st.secret_key_rate()));
                map.insert("sifted_rate_bps".into(), json!(sifted_rate));
                map.insert("secret_fraction".into(), json!(fraction(st)));
                map.insert("auth_key_left_bits".into(), json!(s.auth_key_left));
                map.insert("refused_datagrams".into(), json!(s.refused));
                map.insert("wall_s".into(), json!(s.wall_s));
                map.insert("key_bytes_written".into(), json!(s.key_bytes));
                map.insert(
                    "key_file".into(),
                    json!(s.out.as_ref().map(|p| p.display().to_string())),
                );
                map.insert(
                    "state_file".into(),
                    json!(s.saved.as_ref().map(|p| p.display().to_string())),
                );
                if let Some(store) = &s.store {
                    map.insert(
                        "store".into(),
                        json!({
                            "blocks_stored": store.blocks_stored,
                            "blocks_lost": store.blocks_lost,
                            "chunk_bytes": store.chunk_bytes,
                            "fresh_bytes": store.fresh_bytes,
                        }),
                    );
                }
            }
            println!("{v}");
        }
        Format::Text => {
            let name = role_name(s.role);
            println!(
                "{name}: {} blocks kept, {} dropped{}",
                st.blocks_kept,
                st.blocks_dropped,
                if s.ending == Ending::Interrupted {
                    " (interrupted)"
                } else {
                    ""
                }
            );
            println!(
                "{name}:   sifted {}, sample QBER {:.3} %, leaked {}, final {} ({:.1} % of sifted)",
                bits(processed as f64),
                100.0 * st.qber(),
                bits((st.parity_bits + st.leftover_bits) as f64),
                bits(st.final_bits as f64),
                100.0 * fraction(st).unwrap_or(0.0),
            );
            println!(
                "{name}:   {:.2} s: {} sifted processed, {} secret key; authentication spent {}, {} left",
                st.elapsed_s,
                sifted_rate.map_or_else(|| "-".into(), rate),
                rate(st.secret_key_rate()),
                bits(st.auth_bits_spent as f64),
                bits(s.auth_key_left as f64),
            );
            if let Some(out) = &s.out {
                println!(
                    "{name}:   {} bytes of key written to {}",
                    s.key_bytes,
                    out.display()
                );
            }
            if let Some(store) = &s.store {
                println!(
                    "{name}:   key store: {} blocks stored, {} bytes fresh",
                    store.blocks_stored, store.fresh_bytes
                );
            }
            if s.refused > 0 {
                println!("{name}:   {} datagrams from the peer refused", s.refused);
            }
            if let Some(saved) = &s.saved {
                println!("{name}:   state saved to {}", saved.display());
            }
        }
    }
}

/// Final bits per sifted bit of kept blocks.
fn fraction(st: &PipelineStats) -> Option<f64> {
    (st.sifted_bits > 0).then(|| st.final_bits as f64 / st.sifted_bits as f64)
}

fn bits(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} Gbit", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} Mbit", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kbit", b / 1e3)
    } else {
        format!("{b:.0} bit")
    }
}

fn rate(bps: f64) -> String {
    format!("{}/s", bits(bps))
}
