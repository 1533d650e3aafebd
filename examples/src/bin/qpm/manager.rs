//! The QPM's state: links, their hosts (child processes), registrations,
//! supervision, and the resource tree it serves.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use qkd_core::control::{self, Method, Response, Status};
use qkd_examples::coap_client::CoapClient;
use qkd_examples::coap_service::{Incoming, Registration, Reply, encode_request};
use qkd_examples::state_directory::StateDirectory;
use qkd_postproc::pipeline::{CheckpointMode, PipelineDefinition};
use serde::Serialize;

use crate::layout::{Layout, LinkSpec, SideSpec, fill};

/// Rounds of raising the hold until neither host started past it.
const MAX_HOLD_ROUNDS: usize = 8;
/// How long a held link may take to settle its blocks in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LinkState {
    /// Not running, never started or stopped by an operator.
    Stopped,
    /// Hosts launched, not all registered yet (or a state not yet loaded).
    Starting,
    /// Both hosts registered.
    Running,
    /// Saved and stopped; `resume` starts it from the saved states.
    Hibernated,
    /// Stopped after too many restarts.
    Failed,
    /// Both hosts exited on their own with success (e.g. `qkd-link
    /// --blocks N` settled its blocks); not restarted.
    Finished,
}

pub(crate) struct Host {
    side: &'static str,
    name: String,
    spec: SideSpec,
    state_dir: PathBuf,
    child: Option<Child>,
    /// The process ID of a host a previous QPM started, adopted on its
    /// registration.
    adopted: Option<u32>,
    launched_at: Option<Instant>,
    address: Option<SocketAddr>,
    pid: Option<u32>,
    last_seen: Option<Instant>,
    /// The label of the last state this host saved for the link.
    saved: Option<String>,
    /// A state to load once the host has registered.
    load_pending: Option<String>,
    /// Times this host was launched (`{launch}` of the next launch).
    launches: u64,
    /// The host exited on its own with success since its last launch.
    finished: bool,
}

pub(crate) struct Link {
    name: String,
    pipeline: Option<PathBuf>,
    autostart: bool,
    hosts: [Host; 2],
    state: LinkState,
    restarts: u32,
    next_checkpoint: Option<Instant>,
    /// Both hosts registered since the link was last started fresh: its
    /// hosts have used their fresh-start secrets (for `qkd-link`, pads of
    /// the pre-shared secret), so it is not restarted fresh.
    ran: bool,
}

/// One line to the log (standard error), with the time since the start.
pub(crate) struct Log {
    start: Instant,
}

impl Log {
    #[allow(clippy::print_stderr)]
    pub(crate) fn line(&self, text: &str) {
        eprintln!("qpm [{:9.3}s] {text}", self.start.elapsed().as_secs_f64());
    }
}

pub(crate) struct Manager {
    layout: Layout,
    links: Vec<Link>,
    listen: SocketAddr,
    client: CoapClient,
    started: Instant,
    adopting_until: Instant,
    autostarted: bool,
    pub(crate) log: Log,
    /// The well-known socket, for shutdown requests (a host takes them
    /// only from the QPM's address).
    socket: UdpSocket,
    next_message_id: u16,
}

#[derive(Serialize)]
struct HostView<'a> {
    side: &'a str,
    name: &'a str,
    state: &'a str,
    address: Option<String>,
    pid: Option<u32>,
    saved_state: Option<&'a str>,
}

#[derive(Serialize)]
struct LinkView<'a> {
    name: &'a str,
    state: LinkState,
    restarts: u32,
    hosts: Vec<HostView<'a>>,
}

impl Manager {
    pub(crate) fn new(layout: Layout, socket: UdpSocket, now: Instant) -> std::io::Result<Self> {
        let listen = socket.local_addr()?;
        let client = CoapClient::bind(SocketAddr::new(listen.ip(), 0), layout.qpm.proxy_timeout())?;
        let links = layout
            .links
            .iter()
            .map(|spec| Link::new(spec, &layout))
            .collect();
        Ok(Manager {
            adopting_until: now + layout.qpm.adopt_wait(),
            links,
            listen,
            client,
            started: now,
            autostarted: false,
            log: Log { start: now },
            socket,
            next_message_id: std::process::id() as u16,
            layout,
        })
    }

    /// Answers one request to the QPM's tree.
    pub(crate) fn route(&mut self, now: Instant, incoming: &Incoming<'_>) -> Reply {
        let req = &incoming.request;
        let segments: Vec<&str> = match req
            .segments
            .iter()
            .map(|s| std::str::from_utf8(s))
            .collect::<Result<_, _>>()
        {
            Ok(s) => s,
            Err(_) => return Response::error(Status::NotFound, "no such resource").into(),
        };
        let only = |m: Method, allowed: &str| -> Option<Response> {
            (req.method != m).then(|| {
                Response::error(
                    Status::MethodNotAllowed,
                    &format!("{} not allowed here (allowed: {allowed})", req.method),
                )
            })
        };
        match segments.as_slice() {
            [".well-known", "core"] => {
                if let Some(r) = only(Method::Get, "GET") {
                    return r.into();
                }
                Response {
                    status: Status::Content,
                    content_format: Some(control::LINK_FORMAT),
                    payload: self.discovery().into_bytes(),
                }
                .into()
            }
            ["hosts"] => match req.method {
                Method::Post => self
                    .register(now, incoming.from, req.payload, req.content_format)
                    .into(),
                Method::Get => {
                    let hosts: Vec<HostView<'_>> = self
                        .links
                        .iter()
                        .flat_map(|l| l.hosts.iter().map(|h| h.view(now, &self.layout)))
                        .collect();
                    Response::json(Status::Content, &hosts).into()
                }
                _ => Response::error(Status::MethodNotAllowed, "GET or POST only").into(),
            },
            ["links"] => {
                if let Some(r) = only(Method::Get, "GET") {
                    return r.into();
                }
                let views: Vec<LinkView<'_>> = self
                    .links
                    .iter()
                    .map(|l| l.view(now, &self.layout))
                    .collect();
                Response::json(Status::Content, &views).into()
            }
            ["links", link] => {
                if let Some(r) = only(Method::Get, "GET") {
                    return r.into();
                }
                match self.link_index(link) {
                    Some(i) => {
                        Response::json(Status::Content, &self.links[i].view(now, &self.layout))
                            .into()
                    }
                    None => no_link(link).into(),
                }
            }
            [
                "links",
                link,
                action @ ("start" | "stop" | "hibernate" | "resume" | "save"),
            ] => {
                if let Some(r) = only(Method::Post, "POST") {
                    return r.into();
                }
                let Some(i) = self.link_index(link) else {
                    return no_link(link).into();
                };
                let result = match *action {
                    "start" => self.start(now, i, false),
                    "stop" => {
                        self.stop(i, "stopped by an operator");
                        self.links[i].state = LinkState::Stopped;
                        Ok(())
                    }
                    "hibernate" => self.hibernate(now, i),
                    "save" => self.checkpoint(i),
                    _ => self.start(now, i, true),
                };
                match result {
                    Ok(()) => {
                        Response::json(Status::Changed, &self.links[i].view(now, &self.layout))
                            .into()
                    }
                    Err(r) => r.into(),
                }
            }
            ["links", link, side @ ("alice" | "bob"), rest @ ..] => {
                let Some(i) = self.link_index(link) else {
                    return no_link(link).into();
                };
                let h = usize::from(*side == "bob");
                let Some(address) = self.links[i].hosts[h].address else {
                    return Response::error(
                        Status::ServiceUnavailable,
                        &format!("`{link}/{side}` is not registered"),
                    )
                    .into();
                };
                let path = rest.join("/");
                match self.client.request(
                    address,
                    req.method,
                    &path,
                    req.content_format,
                    req.payload,
                ) {
                    Ok(answer) => match Status::from_code(answer.code) {
                        Some(status) => Response {
                            status,
                            content_format: answer.content_format,
                            payload: answer.payload,
                        }
                        .into(),
                        None => Response::error(
                            Status::BadGateway,
                            &format!("`{link}/{side}` answered {}", answer.code_text()),
                        )
                        .into(),
                    },
                    Err(e) => Response::error(
                        Status::GatewayTimeout,
                        &format!("`{link}/{side}` did not answer: {e}"),
                    )
                    .into(),
                }
            }
            _ => Response::error(Status::NotFound, &format!("no resource {}", req.path())).into(),
        }
    }

    fn link_index(&self, name: &str) -> Option<usize> {
        self.links.iter().position(|l| l.name == name)
    }

    fn discovery(&self) -> String {
        let mut links = vec![
            format!("</links>;ct={};rt=\"qpm.links\"", control::JSON),
            format!("</hosts>;ct={};rt=\"qpm.hosts\"", control::JSON),
        ];
        for l in &self.links {
            let n = control::percent_encode(&l.name);
            links.push(format!("</links/{n}>;ct={};rt=\"qpm.link\"", control::JSON));
            for a in ["start", "stop", "hibernate", "resume", "save"] {
                links.push(format!(
                    "</links/{n}/{a}>;ct={};rt=\"qpm.{a}\"",
                    control::JSON
                ));
            }
            for side in ["alice", "bob"] {
                links.push(format!(
                    "</links/{n}/{side}/.well-known/core>;ct={}",
                    control::LINK_FORMAT
                ));
                links.push(format!(
                    "</links/{n}/{side}/modules>;ct={};rt=\"qkd.modules\"",
                    control::JSON
                ));
            }
        }
        links.join(",")
    }

    /// `POST /hosts`.
    fn register(
        &mut self,
        now: Instant,
        from: SocketAddr,
        payload: &[u8],
        cf: Option<u16>,
    ) -> Response {
        if !matches!(cf, None | Some(control::JSON)) {
            return Response::error(Status::UnsupportedContentFormat, "registrations are JSON");
        }
        let reg: Registration = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                return Response::error(
                    Status::BadRequest,
                    &format!("expected {{\"name\":\"LINK/SIDE\",\"pid\":N}}: {e}"),
                );
            }
        };
        let timeout = self.layout.qpm.host_timeout();
        let adopting = now < self.adopting_until;
        let found = self.links.iter().enumerate().find_map(|(i, l)| {
            l.hosts
                .iter()
                .position(|h| h.name == reg.name)
                .map(|h| (i, h))
        });
        let Some((li, hi)) = found else {
            self.log.line(&format!(
                "refused a registration of unknown host `{}` from {from}",
                reg.name
            ));
            return Response::error(
                Status::Forbidden,
                &format!("no host `{}` in the layout", reg.name),
            );
        };
        let link_state = self.links[li].state;
        let host = &mut self.links[li].hosts[hi];
        if from.ip() != host.spec.address {
            self.log.line(&format!(
                "refused `{}` from unexpected address {from}",
                reg.name
            ));
            return Response::error(
                Status::Forbidden,
                &format!("`{}` must register from {}", reg.name, host.spec.address),
            );
        }
        let fresh = host
            .last_seen
            .is_some_and(|t| now.duration_since(t) < timeout);
        if let Some(addr) = host.address
            && addr != from
            && fresh
        {
            self.log.line(&format!(
                "refused duplicate `{}` from {from} (registered at {addr})",
                reg.name
            ));
            return Response::error(
                Status::Conflict,
                &format!("`{}` is already registered from {addr}", reg.name),
            );
        }
        if let Some(child) = &host.child {
            if child.id() != reg.pid {
                self.log.line(&format!(
                    "refused `{}` from pid {} (its process is {})",
                    reg.name,
                    reg.pid,
                    child.id()
                ));
                return Response::error(
                    Status::Conflict,
                    &format!("`{}` is run by another process", reg.name),
                );
            }
        } else {
            let running = matches!(link_state, LinkState::Running | LinkState::Starting);
            let same_adopted = host.adopted == Some(reg.pid);
            if !(adopting || (running && same_adopted)) {
                return Response::error(
                    Status::Forbidden,
                    &format!("link `{}` is not running", self.links[li].name),
                );
            }
            if host.adopted != Some(reg.pid) {
                self.log.line(&format!(
                    "adopted `{}` (pid {}) at {from}",
                    reg.name, reg.pid
                ));
            }
            host.adopted = Some(reg.pid);
        }
        let new = host.address != Some(from);
        if new {
            self.log.line(&format!(
                "`{}` registered at {from} (pid {})",
                reg.name, reg.pid
            ));
        }
        host.address = Some(from);
        host.pid = Some(reg.pid);
        host.last_seen = Some(now);
        let link = &mut self.links[li];
        if link.state == LinkState::Stopped && link.hosts.iter().all(|h| h.adopted.is_some()) {
            link.state = LinkState::Starting;
        }
        Response::json(
            if new {
                Status::Created
            } else {
                Status::Changed
            },
            &"registered",
        )
    }

    /// Launches the link's hosts; `from_saved` starts each from its last
    /// saved state (resume).
    fn start(&mut self, now: Instant, i: usize, from_saved: bool) -> Result<(), Response> {
        let link = &self.links[i];
        if matches!(link.state, LinkState::Running | LinkState::Starting) {
            return Err(Response::error(
                Status::Conflict,
                &format!("link `{}` is already running", link.name),
            ));
        }
        if from_saved && link.hosts.iter().any(|h| h.saved.is_none()) {
            return Err(Response::error(
                Status::NotFound,
                &format!("link `{}` has no saved state to resume from", link.name),
            ));
        }
        if from_saved && let Some(why) = link.hosts.iter().find_map(Host::state_gone) {
            return Err(Response::error(Status::NotFound, &why));
        }
        self.links[i].restarts = 0;
        if !from_saved {
            // A new run: states of an earlier one do not describe it.
            self.links[i].ran = false;
            for h in &mut self.links[i].hosts {
                h.saved = None;
            }
        }
        self.launch(now, i, from_saved)
            .map_err(|e| Response::error(Status::InternalServerError, &e))
    }

    fn launch(&mut self, now: Instant, i: usize, from_saved: bool) -> Result<(), String> {
        let qpm = self.listen.to_string();
        let layout_dir = self.layout.base.display().to_string();
        let link = &mut self.links[i];
        // Each host from its newest state (see `recover`).
        if from_saved {
            for h in &mut link.hosts {
                if let Some(newest) = h.newest_state() {
                    h.saved = Some(newest);
                }
            }
        }
        // Both sides or neither: check every state before starting anything.
        if from_saved && let Some(why) = link.hosts.iter().find_map(Host::state_gone) {
            return Err(why);
        }
        let pipeline = link
            .pipeline
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        link.state = LinkState::Starting;
        link.next_checkpoint = None;
        for h in 0..2 {
            let host = &mut link.hosts[h];
            if host.adopted.is_some() && host.address.is_some() && !from_saved {
                continue;
            }
            let state_dir = host.state_dir.display().to_string();
            let launch = host.launches.to_string();
            let values = [
                ("{qpm}", qpm.as_str()),
                ("{name}", host.name.as_str()),
                ("{link}", link.name.as_str()),
                ("{side}", host.side),
                ("{pipeline}", pipeline.as_str()),
                ("{state_dir}", state_dir.as_str()),
                ("{launch}", launch.as_str()),
                ("{layout_dir}", layout_dir.as_str()),
            ];
            let mut args: Vec<String> = host.spec.args.iter().map(|a| fill(a, &values)).collect();
            host.load_pending = None;
            let mut resumed = false;
            if from_saved && let Some(label) = host.saved.clone() {
                match &host.spec.resume_args {
                    Some(extra) => {
                        let file = host.state_dir.join(&label).display().to_string();
                        let mut v = values.to_vec();
                        v.push(("{state_file}", file.as_str()));
                        v.push(("{state}", label.as_str()));
                        args.extend(extra.iter().map(|a| fill(a, &v)));
                        resumed = true;
                    }
                    None => host.load_pending = Some(label),
                }
            }
            if !resumed {
                args.extend(host.spec.fresh_args.iter().map(|a| fill(a, &values)));
            }
            std::fs::create_dir_all(&host.state_dir)
                .map_err(|e| format!("cannot create {}: {e}", host.state_dir.display()))?;
            let stdout = match &host.spec.stdout {
                Some(path) => {
                    let path = PathBuf::from(fill(path, &values));
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)
                            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
                    }
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                    Stdio::from(file)
                }
                None => Stdio::inherit(),
            };
            let child = Process::new(&host.spec.program)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(stdout)
                .spawn()
                .map_err(|e| {
                    format!("cannot start `{}` ({}): {e}", host.name, host.spec.program)
                })?;
            self.log.line(&format!(
                "started `{}` (pid {}){}",
                host.name,
                child.id(),
                if from_saved {
                    format!(" from {}", host.saved.as_deref().unwrap_or("-"))
                } else {
                    String::new()
                }
            ));
            host.child = Some(child);
            host.launches += 1;
            host.finished = false;
            host.adopted = None;
            host.launched_at = Some(now);
            host.address = None;
            host.pid = None;
            host.last_seen = None;
        }
        Ok(())
    }

    /// Asks each host to shut down, waits a moment, then kills what is left.
    fn stop(&mut self, i: usize, why: &str) {
        for host in &self.links[i].hosts {
            if let Some(addr) = host.address {
                self.next_message_id = self.next_message_id.wrapping_add(1);
                if let Ok(d) = encode_request(
                    coap_lite::MessageType::NonConfirmable,
                    self.next_message_id,
                    &[0x51],
                    Method::Post,
                    "/host/shutdown",
                    None,
                    &[],
                    None,
                ) {
                    let _ = self.socket.send_to(&d, addr);
                }
            }
        }
        let link = &mut self.links[i];
        for host in &mut link.hosts {
            if let Some(mut child) = host.child.take() {
                let deadline = Instant::now() + Duration::from_secs(1);
                let mut exited = false;
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        exited = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                if !exited {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                self.log.line(&format!("stopped `{}` ({why})", host.name));
            } else if host.adopted.is_some() {
                self.log.line(&format!(
                    "asked adopted `{}` to shut down ({why})",
                    host.name
                ));
            }
            host.adopted = None;
            host.address = None;
            host.pid = None;
            host.last_seen = None;
            host.launched_at = None;
            host.load_pending = None;
            host.finished = false;
        }
    }

    /// One number from a host's `pipeline` module statistics.
    fn pipeline_stat(&mut self, addr: SocketAddr, host: &str, name: &str) -> Result<u64, Response> {
        let answer = self
            .client
            .request(addr, Method::Get, "/modules/pipeline/stats", None, &[])
            .map_err(|e| Response::error(Status::GatewayTimeout, &format!("`{host}`: {e}")))?;
        if Status::from_code(answer.code) == Some(Status::NotFound) {
            return Err(Response::error(
                Status::NotFound,
                &format!("`{host}` has no `pipeline` module"),
            ));
        }
        let stats: Vec<serde_json::Value> = serde_json::from_slice(&answer.payload)
            .ok()
            .filter(|_| Status::from_code(answer.code).is_some_and(Status::is_success))
            .ok_or_else(|| {
                Response::error(
                    Status::BadGateway,
                    &format!(
                        "`{host}` answered its pipeline statistics with {}",
                        answer.code_text()
                    ),
                )
            })?;
        stats
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["value"].as_u64())
            .ok_or_else(|| {
                Response::error(
                    Status::BadGateway,
                    &format!("`{host}` reports no pipeline statistic `{name}`"),
                )
            })
    }

    /// Sets the `hold_from_block` parameter of a host's pipeline.
    fn set_hold(&mut self, addr: SocketAddr, host: &str, from: u64) -> Result<(), Response> {
        let answer = self
            .client
            .request(
                addr,
                Method::Put,
                "/modules/pipeline/params/hold_from_block",
                Some(control::JSON),
                from.to_string().as_bytes(),
            )
            .map_err(|e| Response::error(Status::GatewayTimeout, &format!("`{host}`: {e}")))?;
        if Status::from_code(answer.code).is_some_and(Status::is_success) {
            Ok(())
        } else {
            Err(Response::error(
                Status::BadGateway,
                &format!(
                    "`{host}` refused the hold: {} {}",
                    answer.code_text(),
                    answer.text()
                ),
            ))
        }
    }

    /// The registered addresses of a link's two hosts.
    fn host_addresses(&self, i: usize) -> Result<[(SocketAddr, String); 2], Response> {
        let one = |h: &Host| {
            h.address.map(|a| (a, h.name.clone())).ok_or_else(|| {
                Response::error(
                    Status::ServiceUnavailable,
                    &format!("`{}` is not registered", h.name),
                )
            })
        };
        let hosts = &self.links[i].hosts;
        Ok([one(&hosts[0])?, one(&hosts[1])?])
    }

    /// Quiets a running link so that its two hosts can be saved one after
    /// the other and still agree: both pipelines hold every block from the
    /// same number on (`hold_from_block`, raised until neither side has
    /// started past it), then the QPM waits until neither has a block in
    /// flight. Without it a block settled between the two saves leaves the
    /// restored authentication pools out of step (`FeedDiverged`).
    ///
    /// A host without a `pipeline` module (another kind of module host) is
    /// saved as it is.
    fn quiesce(&mut self, i: usize) -> Result<(), Response> {
        let hosts = self.host_addresses(i)?;
        for (addr, name) in &hosts {
            match self.pipeline_stat(*addr, name, "next_block") {
                Err(r) if r.status == Status::NotFound => return Ok(()),
                Err(r) => return Err(r),
                Ok(_) => {}
            }
        }
        let mut from: Option<u64> = None;
        for _ in 0..MAX_HOLD_ROUNDS {
            let mut next = 0;
            for (addr, name) in &hosts {
                next = next.max(self.pipeline_stat(*addr, name, "next_block")?);
            }
            if from.is_some_and(|f| next <= f) {
                break;
            }
            from = Some(next);
            for (addr, name) in &hosts {
                self.set_hold(*addr, name, next)?;
            }
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            let mut in_flight = 0;
            for (addr, name) in &hosts {
                in_flight += self.pipeline_stat(*addr, name, "blocks_in_flight")?;
            }
            if in_flight == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Response::error(
                    Status::GatewayTimeout,
                    &format!(
                        "link `{}` still has {in_flight} blocks in flight after {} s on hold",
                        self.links[i].name,
                        DRAIN_TIMEOUT.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lifts the hold of [`quiesce`](Self::quiesce) on both hosts.
    fn release(&mut self, i: usize) -> Result<(), Response> {
        for (addr, name) in self.host_addresses(i)? {
            if let Err(r) = self.pipeline_stat(addr, &name, "next_block") {
                if r.status == Status::NotFound {
                    continue;
                }
                return Err(r);
            }
            self.set_hold(addr, &name, u64::MAX)?;
        }
        Ok(())
    }

    /// Quiets the link, saves both hosts' states and lifts the hold when
    /// `resume_after`; on success the labels become the link's saved
    /// states. On a failure the hold is lifted.
    fn save(&mut self, i: usize, resume_after: bool) -> Result<[String; 2], Response> {
        let saved = self.quiesce(i).and_then(|()| self.save_both(i));
        if resume_after || saved.is_err() {
            let released = self.release(i);
            if saved.is_ok() {
                released?;
            }
        }
        saved
    }

    /// Saves both hosts' states (after [`quiesce`](Self::quiesce)).
    fn save_both(&mut self, i: usize) -> Result<[String; 2], Response> {
        let mut labels = Vec::new();
        for host in &self.links[i].hosts {
            let Some(addr) = host.address else {
                return Err(Response::error(
                    Status::ServiceUnavailable,
                    &format!("`{}` is not registered", host.name),
                ));
            };
            let answer = self
                .client
                .request(addr, Method::Post, "/pipeline/save", None, &[])
                .map_err(|e| {
                    Response::error(Status::GatewayTimeout, &format!("`{}`: {e}", host.name))
                })?;
            if !Status::from_code(answer.code).is_some_and(Status::is_success) {
                return Err(Response::error(
                    Status::BadGateway,
                    &format!(
                        "`{}` could not save: {} {}",
                        host.name,
                        answer.code_text(),
                        answer.text()
                    ),
                ));
            }
            #[derive(serde::Deserialize)]
            struct Saved {
                state: String,
            }
            let saved: Saved = serde_json::from_slice(&answer.payload).map_err(|e| {
                Response::error(
                    Status::BadGateway,
                    &format!("`{}` answered a save with {e}", host.name),
                )
            })?;
            labels.push(saved.state);
        }
        let labels: [String; 2] = [labels[0].clone(), labels[1].clone()];
        for (host, label) in self.links[i].hosts.iter_mut().zip(labels.iter()) {
            host.saved = Some(label.clone());
        }
        Ok(labels)
    }

    /// `POST /links/{link}/save`: both hosts save, the link keeps running;
    /// a later failure restarts it from these states.
    fn checkpoint(&mut self, i: usize) -> Result<(), Response> {
        if self.links[i].state != LinkState::Running {
            return Err(Response::error(
                Status::Conflict,
                &format!("link `{}` is not running", self.links[i].name),
            ));
        }
        let labels = self.save(i, true)?;
        self.log.line(&format!(
            "link `{}` saved as {} / {}",
            self.links[i].name, labels[0], labels[1]
        ));
        Ok(())
    }

    fn hibernate(&mut self, _now: Instant, i: usize) -> Result<(), Response> {
        if self.links[i].state != LinkState::Running {
            return Err(Response::error(
                Status::Conflict,
                &format!("link `{}` is not running", self.links[i].name),
            ));
        }
        let labels = self.save(i, false)?;
        self.log.line(&format!(
            "link `{}` saved as {} / {}; stopping",
            self.links[i].name, labels[0], labels[1]
        ));
        self.stop(i, "hibernated");
        self.links[i].state = LinkState::Hibernated;
        Ok(())
    }

    /// Supervision, autostart, pending loads and checkpoints; called often.
    pub(crate) fn tick(&mut self, now: Instant) {
        if !self.autostarted && now >= self.adopting_until {
            self.autostarted = true;
            for i in 0..self.links.len() {
                let l = &self.links[i];
                if (l.autostart && l.state == LinkState::Stopped
                    || l.state == LinkState::Starting
                        && l.hosts.iter().any(|h| h.address.is_none()))
                    && let Err(e) = self.launch(now, i, false)
                {
                    self.log
                        .line(&format!("link `{}`: {e}", self.links[i].name));
                    self.links[i].state = LinkState::Failed;
                }
            }
        }
        let timeout = self.layout.qpm.host_timeout();
        for i in 0..self.links.len() {
            if !matches!(
                self.links[i].state,
                LinkState::Running | LinkState::Starting
            ) {
                continue;
            }
            let mut failure = None;
            for host in &mut self.links[i].hosts {
                if host.finished {
                    continue;
                }
                if let Some(child) = &mut host.child
                    && let Ok(Some(status)) = child.try_wait()
                {
                    host.child = None;
                    if status.success() {
                        // Done with what it was asked (`--blocks`): not a
                        // failure, and not restarted.
                        self.log
                            .line(&format!("`{}` finished ({status})", host.name));
                        host.finished = true;
                        host.address = None;
                        host.last_seen = None;
                        continue;
                    }
                    failure = Some(format!("`{}` exited ({status})", host.name));
                    break;
                }
                let since = host.last_seen.or(host.launched_at);
                if since.is_some_and(|t| now.duration_since(t) > timeout) {
                    failure = Some(if host.last_seen.is_some() {
                        format!("`{}` stopped answering", host.name)
                    } else {
                        format!("`{}` did not register", host.name)
                    });
                    break;
                }
            }
            if let Some(why) = failure {
                self.recover(now, i, &why);
                continue;
            }
            if self.links[i].hosts.iter().all(|h| h.finished) {
                self.links[i].state = LinkState::Finished;
                self.log
                    .line(&format!("link `{}` finished", self.links[i].name));
                continue;
            }
            // Pending loads, then Starting -> Running.
            for h in 0..2 {
                let host = &self.links[i].hosts[h];
                if let (Some(addr), Some(label)) = (host.address, host.load_pending.clone()) {
                    let body = serde_json::json!({ "state": label }).to_string();
                    let name = host.name.clone();
                    match self.client.request(
                        addr,
                        Method::Post,
                        "/pipeline/load",
                        Some(control::JSON),
                        body.as_bytes(),
                    ) {
                        Ok(a) if Status::from_code(a.code).is_some_and(Status::is_success) => {
                            self.log.line(&format!("`{name}` loaded {label}"));
                            self.links[i].hosts[h].load_pending = None;
                        }
                        Ok(a) => {
                            self.log.line(&format!(
                                "`{name}` refused to load {label}: {} {}",
                                a.code_text(),
                                a.text()
                            ));
                            self.links[i].hosts[h].load_pending = None;
                            self.recover(now, i, &format!("`{name}` could not load its state"));
                            break;
                        }
                        Err(e) => self
                            .log
                            .line(&format!("`{name}` did not answer the load: {e}")),
                    }
                }
            }
            let link = &mut self.links[i];
            if link.state == LinkState::Starting
                && link
                    .hosts
                    .iter()
                    .all(|h| h.address.is_some() && h.load_pending.is_none())
            {
                link.state = LinkState::Running;
                link.ran = true;
                self.log.line(&format!("link `{}` running", link.name));
                if self.layout.qpm.checkpoint_every_s > 0 {
                    link.next_checkpoint =
                        Some(now + Duration::from_secs(self.layout.qpm.checkpoint_every_s));
                }
            }
            if self.links[i].state == LinkState::Running
                && self.links[i].next_checkpoint.is_some_and(|t| now >= t)
            {
                self.links[i].next_checkpoint =
                    Some(now + Duration::from_secs(self.layout.qpm.checkpoint_every_s));
                match self.save(i, true) {
                    Ok(l) => self.log.line(&format!(
                        "link `{}` checkpoint {} / {}",
                        self.links[i].name, l[0], l[1]
                    )),
                    Err(r) => self.log.line(&format!(
                        "link `{}` checkpoint failed: {}",
                        self.links[i].name,
                        r.text()
                    )),
                }
            }
        }
    }

    /// A host failed: restart the whole link from its last saved states
    /// (both sides must restart from the same point), within the bound.
    fn recover(&mut self, now: Instant, i: usize, why: &str) {
        let max = self.layout.qpm.max_restarts;
        let link_name = self.links[i].name.clone();
        self.stop(i, why);
        if self.links[i].restarts >= max {
            self.log.line(&format!(
                "link `{link_name}`: {why}; {max} restarts used, leaving it stopped"
            ));
            self.links[i].state = LinkState::Failed;
            return;
        }
        // A crash restart starts from each host's newest state (a host with
        // manual checkpoints writes one at every checkpoint; restoring an
        // older one would use authentication pads again).
        for h in &mut self.links[i].hosts {
            if let Some(newest) = h.newest_state() {
                h.saved = Some(newest);
            }
        }
        let from_saved = self.links[i].hosts.iter().all(|h| h.saved.is_some());
        if from_saved && self.links[i].ran && self.links[i].auto_checkpoints() {
            self.log.line(&format!(
                "link `{link_name}`: {why}; not restarted: its pipeline commits its checkpoints \
                 itself (`checkpoints = \"auto\"`), so a state saved while it ran is older than \
                 the authentication pads it used afterwards, and a restart from it would use them \
                 again; give the link a pipeline with `checkpoints = \"manual\"` (each host then \
                 writes its state at every checkpoint) to make it restartable after a crash"
            ));
            self.links[i].state = LinkState::Failed;
            return;
        }
        if !from_saved && self.links[i].ran {
            self.log.line(&format!(
                "link `{link_name}`: {why}; not restarted: it ran and has no saved state, and a \
                 fresh start would use its fresh-start secrets again (a qkd-link would reuse \
                 authentication pads of its pre-shared secret); save running links \
                 (`POST /links/{link_name}/save` or qpm.checkpoint_every_s) to make them restartable"
            ));
            self.links[i].state = LinkState::Failed;
            return;
        }
        self.links[i].restarts += 1;
        self.log.line(&format!(
            "link `{link_name}`: {why}; restart {} of {max} {}",
            self.links[i].restarts,
            if from_saved {
                "from the last saved states"
            } else {
                "fresh (no saved state)"
            }
        ));
        if let Err(e) = self.launch(now, i, from_saved) {
            self.log.line(&format!("link `{link_name}`: {e}"));
            self.links[i].state = LinkState::Failed;
        }
    }

    /// Stops every link's hosts (the QPM is exiting).
    pub(crate) fn stop_all(&mut self) {
        for i in 0..self.links.len() {
            if self.links[i].hosts.iter().any(|h| h.child.is_some()) {
                self.stop(i, "the QPM is exiting");
            }
        }
    }

    pub(crate) fn uptime(&self, now: Instant) -> Duration {
        now.duration_since(self.started)
    }
}

impl Link {
    /// Whether the link's pipeline definition commits its checkpoints
    /// itself (`checkpoints = "auto"`): its hosts then write no state at
    /// each checkpoint, and none they saved is safe to restart from after a
    /// crash. A link without a definition file runs hosts the QPM cannot
    /// look into: the layout's author answers for them.
    fn auto_checkpoints(&self) -> bool {
        let Some(path) = &self.pipeline else {
            return false;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        let parsed = if text.trim_start().starts_with('<') {
            PipelineDefinition::from_xml(&text)
        } else {
            PipelineDefinition::from_toml(&text)
        };
        parsed.is_ok_and(|d| d.checkpoints == CheckpointMode::Auto)
    }

    fn new(spec: &LinkSpec, layout: &Layout) -> Self {
        let host = |side: &'static str, s: &SideSpec| Host {
            side,
            name: format!("{}/{side}", spec.name),
            spec: s.clone(),
            state_dir: layout.qpm.state_dir.join(&spec.name).join(side),
            child: None,
            adopted: None,
            launched_at: None,
            address: None,
            pid: None,
            last_seen: None,
            saved: None,
            load_pending: None,
            launches: 0,
            finished: false,
        };
        Link {
            name: spec.name.clone(),
            pipeline: spec.pipeline.clone(),
            autostart: spec.autostart,
            hosts: [host("alice", &spec.alice), host("bob", &spec.bob)],
            state: LinkState::Stopped,
            restarts: 0,
            next_checkpoint: None,
            ran: false,
        }
    }

    fn view<'a>(&'a self, now: Instant, layout: &Layout) -> LinkView<'a> {
        LinkView {
            name: &self.name,
            state: self.state,
            restarts: self.restarts,
            hosts: self.hosts.iter().map(|h| h.view(now, layout)).collect(),
        }
    }
}

impl Host {
    /// The newest state in this host's state folder, if any (the folder
    /// keeps only the newest; see `qkd_examples::state_directory`).
    fn newest_state(&self) -> Option<String> {
        if !self.state_dir.is_dir() {
            return None;
        }
        StateDirectory::open(&self.state_dir)
            .and_then(|d| d.labels())
            .ok()?
            .pop()
    }

    /// Why this host cannot be started from its saved state: the file is
    /// gone (a `qkd-link` consumes the state it resumed from).
    fn state_gone(&self) -> Option<String> {
        let label = self.saved.as_ref()?;
        let file = self.state_dir.join(label);
        (self.spec.resume_args.is_some() && !file.is_file()).then(|| {
            format!(
                "the saved state {label} of `{}` is gone ({} was resumed from already): save the \
                 link again (`POST /links/LINK/save`) after a resume",
                self.name,
                file.display()
            )
        })
    }

    fn view<'a>(&'a self, now: Instant, layout: &Layout) -> HostView<'a> {
        let fresh = self
            .last_seen
            .is_some_and(|t| now.duration_since(t) < layout.qpm.host_timeout());
        let state = match (self.address, self.child.is_some() || self.adopted.is_some()) {
            _ if self.finished => "finished",
            (Some(_), _) if fresh => "registered",
            (Some(_), _) => "silent",
            (None, true) => "launched",
            (None, false) => "stopped",
        };
        HostView {
            side: self.side,
            name: &self.name,
            state,
            address: self.address.map(|a| a.to_string()),
            pid: self.child.as_ref().map(Child::id).or(self.pid),
            saved_state: self.saved.as_deref(),
        }
    }
}

fn no_link(name: &str) -> Response {
    Response::error(Status::NotFound, &format!("no link `{name}`"))
}
