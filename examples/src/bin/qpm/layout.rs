//! The process layout file: which links the QPM runs, and for each side of
//! each link the address its registrations come from and the program and
//! arguments that start its host. TOML; see `examples/qpm/layout.toml`.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Layout {
    #[serde(default)]
    pub(crate) qpm: QpmSection,
    #[serde(default, rename = "link")]
    pub(crate) links: Vec<LinkSpec>,
    /// The layout file's folder (`{layout_dir}`).
    #[serde(skip)]
    pub(crate) base: PathBuf,
}

/// `[qpm]`: the manager's own settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QpmSection {
    /// The well-known address; `--listen` overrides it.
    #[serde(default = "default_listen")]
    pub(crate) listen: SocketAddr,
    /// Where each host's saved states go, one folder per host; relative
    /// to the layout file.
    #[serde(default = "default_state_dir")]
    pub(crate) state_dir: PathBuf,
    /// A host that has not registered (or refreshed its registration)
    /// for this long is taken as stopped.
    #[serde(default = "default_host_timeout_ms")]
    pub(crate) host_timeout_ms: u64,
    /// How many times a link is restarted after failures before it is
    /// left stopped; an operator's start or resume resets the count.
    #[serde(default = "default_max_restarts")]
    pub(crate) max_restarts: u32,
    /// How long a proxied request or a save may take.
    #[serde(default = "default_proxy_timeout_ms")]
    pub(crate) proxy_timeout_ms: u64,
    /// How long after its own start the QPM waits for hosts still running
    /// from a previous QPM to register again before it starts links.
    #[serde(default = "default_adopt_wait_ms")]
    pub(crate) adopt_wait_ms: u64,
    /// Save every running link's state this often (0: only on hibernate).
    #[serde(default)]
    pub(crate) checkpoint_every_s: u64,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5683))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("qpm-state")
}
fn default_host_timeout_ms() -> u64 {
    6000
}
fn default_max_restarts() -> u32 {
    3
}
fn default_proxy_timeout_ms() -> u64 {
    2000
}
fn default_adopt_wait_ms() -> u64 {
    2500
}

impl Default for QpmSection {
    fn default() -> Self {
        QpmSection {
            listen: default_listen(),
            state_dir: default_state_dir(),
            host_timeout_ms: default_host_timeout_ms(),
            max_restarts: default_max_restarts(),
            proxy_timeout_ms: default_proxy_timeout_ms(),
            adopt_wait_ms: default_adopt_wait_ms(),
            checkpoint_every_s: 0,
        }
    }
}

impl QpmSection {
    pub(crate) fn host_timeout(&self) -> Duration {
        Duration::from_millis(self.host_timeout_ms)
    }
    pub(crate) fn proxy_timeout(&self) -> Duration {
        Duration::from_millis(self.proxy_timeout_ms)
    }
    pub(crate) fn adopt_wait(&self) -> Duration {
        Duration::from_millis(self.adopt_wait_ms)
    }
}

/// `[[link]]`: one link, two sides.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkSpec {
    pub(crate) name: String,
    /// The pipeline definition file, relative to the layout file; handed to
    /// the hosts as `{pipeline}`.
    #[serde(default)]
    pub(crate) pipeline: Option<PathBuf>,
    /// Start the link when the QPM starts (default) or wait for `start`.
    #[serde(default = "yes")]
    pub(crate) autostart: bool,
    pub(crate) alice: SideSpec,
    pub(crate) bob: SideSpec,
}

fn yes() -> bool {
    true
}

/// `[link.alice]`, `[link.bob]`: one pipeline host.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct SideSpec {
    /// The address its registrations must come from.
    pub(crate) address: IpAddr,
    /// The program: a path (relative to the layout file when it has a
    /// slash) or a name looked up on `PATH`.
    pub(crate) program: String,
    /// Its arguments, with `{qpm}`, `{name}`, `{link}`, `{side}`,
    /// `{pipeline}`, `{state_dir}`, `{launch}` (how many times this host
    /// was launched before) and `{layout_dir}` filled in.
    #[serde(default)]
    pub(crate) args: Vec<String>,
    /// Arguments added only when the host starts fresh, not from a saved
    /// state: what a resumed host must not be given again (for
    /// `qkd-link`, the pre-shared secret and the pipeline's seed).
    #[serde(default)]
    pub(crate) fresh_args: Vec<String>,
    /// A file the host's standard output is appended to (placeholders as
    /// in `args`; relative to the layout file); default: the QPM's own.
    #[serde(default)]
    pub(crate) stdout: Option<String>,
    /// Arguments added when the host is started from a saved state, with
    /// `{state_file}` and `{state}` (the label) filled in as well. Without
    /// them, the QPM starts the host plain and sends it
    /// `POST /pipeline/load` once it has registered.
    #[serde(default)]
    pub(crate) resume_args: Option<Vec<String>>,
}

/// Why the layout file was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LayoutError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{field}` {reason}")]
    Invalid {
        path: String,
        field: String,
        reason: String,
    },
}

const PLACEHOLDERS: [&str; 8] = [
    "{layout_dir}",
    "{qpm}",
    "{name}",
    "{link}",
    "{side}",
    "{pipeline}",
    "{state_dir}",
    "{launch}",
];
const RESUME_PLACEHOLDERS: [&str; 2] = ["{state_file}", "{state}"];

impl Layout {
    /// Reads and checks a layout file; relative paths in it are made
    /// relative to its folder.
    pub(crate) fn load(path: &Path) -> Result<Layout, LayoutError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LayoutError::Read {
            path: shown.clone(),
            source,
        })?;
        let mut layout = Layout::parse(&text).map_err(|e| match e {
            LayoutError::Parse { message, .. } => LayoutError::Parse {
                path: shown.clone(),
                message,
            },
            LayoutError::Invalid { field, reason, .. } => LayoutError::Invalid {
                path: shown.clone(),
                field,
                reason,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        layout.base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base.to_owned()
        };
        if layout.qpm.state_dir.is_relative() {
            layout.qpm.state_dir = base.join(&layout.qpm.state_dir);
        }
        for link in &mut layout.links {
            if let Some(p) = &link.pipeline
                && p.is_relative()
            {
                link.pipeline = Some(base.join(p));
            }
            for side in [&mut link.alice, &mut link.bob] {
                if side.program.contains('/') && Path::new(&side.program).is_relative() {
                    side.program = base.join(&side.program).display().to_string();
                }
                if let Some(out) = &mut side.stdout
                    && Path::new(out.as_str()).is_relative()
                    && !out.starts_with('{')
                {
                    *out = base.join(out.as_str()).display().to_string();
                }
            }
        }
        Ok(layout)
    }

    /// Parses and checks layout text (paths left as written).
    pub(crate) fn parse(text: &str) -> Result<Layout, LayoutError> {
        let layout: Layout = toml::from_str(text).map_err(|e| LayoutError::Parse {
            path: String::new(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |field: String, reason: &str| LayoutError::Invalid {
            path: String::new(),
            field,
            reason: reason.to_owned(),
        };
        let q = &layout.qpm;
        if !(100..=600_000).contains(&q.host_timeout_ms) {
            return Err(invalid(
                "qpm.host_timeout_ms".into(),
                "must be between 100 and 600000",
            ));
        }
        if !(10..=60_000).contains(&q.proxy_timeout_ms) {
            return Err(invalid(
                "qpm.proxy_timeout_ms".into(),
                "must be between 10 and 60000",
            ));
        }
        if q.adopt_wait_ms > 600_000 {
            return Err(invalid(
                "qpm.adopt_wait_ms".into(),
                "must be at most 600000",
            ));
        }
        if q.max_restarts > 1000 {
            return Err(invalid("qpm.max_restarts".into(), "must be at most 1000"));
        }
        if q.checkpoint_every_s > 86_400 {
            return Err(invalid(
                "qpm.checkpoint_every_s".into(),
                "must be at most 86400",
            ));
        }
        let mut names = HashSet::new();
        for (i, link) in layout.links.iter().enumerate() {
            let at = |f: &str| format!("link[{i}].{f}");
            let ok_name = !link.name.is_empty()
                && link.name.len() <= 64
                && link
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name {
                return Err(invalid(
                    at("name"),
                    "must be 1 to 64 letters, digits, '-' or '_'",
                ));
            }
            if !names.insert(link.name.as_str()) {
                return Err(invalid(
                    at("name"),
                    &format!("`{}` is used twice", link.name),
                ));
            }
            for (side_name, side) in [("alice", &link.alice), ("bob", &link.bob)] {
                if side.program.trim().is_empty() {
                    return Err(invalid(
                        at(&format!("{side_name}.program")),
                        "must not be empty",
                    ));
                }
                for (j, arg) in side.args.iter().enumerate() {
                    check_placeholders(arg, &[])
                        .map_err(|r| invalid(at(&format!("{side_name}.args[{j}]")), &r))?;
                }
                for (j, arg) in side.fresh_args.iter().enumerate() {
                    check_placeholders(arg, &[])
                        .map_err(|r| invalid(at(&format!("{side_name}.fresh_args[{j}]")), &r))?;
                }
                if let Some(out) = &side.stdout {
                    check_placeholders(out, &[])
                        .map_err(|r| invalid(at(&format!("{side_name}.stdout")), &r))?;
                    if out.trim().is_empty() {
                        return Err(invalid(
                            at(&format!("{side_name}.stdout")),
                            "must not be empty",
                        ));
                    }
                }
                for (j, arg) in side.resume_args.iter().flatten().enumerate() {
                    check_placeholders(arg, &RESUME_PLACEHOLDERS)
                        .map_err(|r| invalid(at(&format!("{side_name}.resume_args[{j}]")), &r))?;
                }
            }
        }
        Ok(layout)
    }
}

fn check_placeholders(arg: &str, extra: &[&str]) -> Result<(), String> {
    let mut rest = arg;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err("has a `{` without `}`".into());
        };
        let p = &rest[start..start + len + 1];
        if !PLACEHOLDERS.contains(&p) && !extra.contains(&p) {
            return Err(format!("names no known placeholder: {p}"));
        }
        rest = &rest[start + len + 1..];
    }
    Ok(())
}

/// `arg` with each `{key}` replaced by its value.
pub(crate) fn fill(arg: &str, values: &[(&str, &str)]) -> String {
    let mut out = arg.to_owned();
    for (k, v) in values {
        out = out.replace(k, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[qpm]
listen = "127.0.0.1:5683"
host_timeout_ms = 3000

[[link]]
name = "ground-1"
pipeline = "pipeline.toml"

[link.alice]
address = "127.0.0.1"
program = "qkd-link"
args = ["alice", "--qpm", "{qpm}", "--name", "{name}"]
resume_args = ["--resume", "{state_file}"]

[link.bob]
address = "127.0.0.1"
program = "qkd-link"
"#;

    /// `GOOD` with bob's program line replaced.
    fn last_program(text: &str, line: &str) -> String {
        let (a, b) = text.rsplit_once("program = \"qkd-link\"").unwrap();
        format!("{a}{line}{b}")
    }

    #[test]
    fn a_good_layout_parses() {
        let l = Layout::parse(GOOD).unwrap();
        let with = GOOD.replace(
            "resume_args = [",
            "fresh_args = [\"--psk-file\", \"{layout_dir}/psk-{link}.hex\"]\n\
             stdout = \"{state_dir}/out-{launch}.jsonl\"\nresume_args = [",
        );
        let l2 = Layout::parse(&with).unwrap();
        assert_eq!(l2.links[0].alice.fresh_args.len(), 2);
        assert!(l2.links[0].alice.stdout.is_some());
        assert_eq!(l.links.len(), 1);
        assert_eq!(l.qpm.host_timeout(), Duration::from_secs(3));
        assert!(l.links[0].autostart);
        assert_eq!(
            fill(
                "{name}:{qpm}",
                &[("{name}", "ground-1/alice"), ("{qpm}", "127.0.0.1:5683")]
            ),
            "ground-1/alice:127.0.0.1:5683"
        );
    }

    #[test]
    fn the_committed_example_loads() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/qpm/layout.toml"));
        let l = Layout::load(path).unwrap();
        assert_eq!(l.links.len(), 2);
        assert!(l.base.ends_with("qpm"));
        assert_eq!(l.links[0].alice.fresh_args[0], "--psk-file");
        assert!(l.links[0].alice.args.iter().all(|a| !a.contains("psk")));
        assert!(!l.links[1].autostart);
        assert!(l.qpm.state_dir.ends_with("qpm/qpm-state"));
        let pipeline = l.links[0].pipeline.as_ref().unwrap();
        assert!(
            pipeline.ends_with("qkd-postproc/pipelines/default.toml"),
            "{}",
            pipeline.display()
        );
        assert_eq!(
            l.links[0].bob.resume_args.as_ref().unwrap()[1],
            "{state_file}"
        );
    }

    #[test]
    fn bad_layouts_name_the_field() {
        let cases = [
            (
                GOOD.replace("host_timeout_ms = 3000", "host_timeout_ms = 5"),
                "qpm.host_timeout_ms",
            ),
            (GOOD.replace("\"ground-1\"", "\"a/b\""), "link[0].name"),
            (
                GOOD.replace("\"{name}\"", "\"{nme}\""),
                "link[0].alice.args[4]",
            ),
            (
                GOOD.replace("{state_file}", "{stat}"),
                "link[0].alice.resume_args[1]",
            ),
            (last_program(GOOD, "program = \" \""), "link[0].bob.program"),
            (
                GOOD.replace(
                    "resume_args = [",
                    "fresh_args = [\"--psk-file\", \"{secret}\"]\nresume_args = [",
                ),
                "link[0].alice.fresh_args[1]",
            ),
            (
                GOOD.replace("resume_args = [", "stdout = \" \"\nresume_args = ["),
                "link[0].alice.stdout",
            ),
            (
                GOOD.replace(
                    "resume_args = [",
                    "stdout = \"{state_dir}/{state}.log\"\nresume_args = [",
                ),
                "link[0].alice.stdout",
            ),
            (
                format!(
                    "{GOOD}\n[[link]]\nname = \"ground-1\"\n[link.alice]\naddress = \"127.0.0.1\"\nprogram = \"x\"\n[link.bob]\naddress = \"127.0.0.1\"\nprogram = \"x\"\n"
                ),
                "link[1].name",
            ),
        ];
        for (text, field) in cases {
            let e = Layout::parse(&text).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let e = Layout::parse(&GOOD.replace("[qpm]", "[qpm]\nlisten_port = 1")).unwrap_err();
        assert!(e.to_string().contains("listen_port"), "{e}");
        let e = Layout::parse(&last_program(GOOD, "")).unwrap_err();
        assert!(matches!(e, LayoutError::Parse { .. }), "{e}");
        let e = Layout::parse("[[link]]\nname = \"x\"\n[link.alice]\naddress = \"nowhere\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
    }
}
