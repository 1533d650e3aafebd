//! The CoAP service over the control surface, sans-IO and on real sockets:
//! answers and codes, duplicates, block-wise answers, Observe, registration
//! with the QPM, shutdown, and arbitrary datagrams.

mod fixture;

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use proptest::prelude::*;
use qkd_core::control::{MemoryStateStore, Method, Status};
use qkd_core::module::{Module, ModuleHost, ParameterError, ParameterInfo, Statistic, Value};
use qkd_examples::coap_client::CoapClient;
use qkd_examples::coap_service::{
    BlockOption, ControlEndpoint, EndpointConfig, RegistrationState, decode_uint, encode_request,
    spawn,
};

use fixture::{FixtureHost, Source};

fn peer() -> SocketAddr {
    "127.0.0.1:40001".parse().unwrap()
}
fn qpm() -> SocketAddr {
    "127.0.0.1:5683".parse().unwrap()
}

fn host() -> FixtureHost {
    FixtureHost {
        source: Source::new("test/alice"),
    }
}

fn request(mid: u16, method: Method, path: &str, payload: &[u8]) -> Vec<u8> {
    encode_request(
        MessageType::Confirmable,
        mid,
        &[1, 2, 3],
        method,
        path,
        None,
        payload,
        None,
    )
    .unwrap()
}

/// Feeds one datagram and returns the answers.
fn feed(
    ep: &mut ControlEndpoint,
    now: Instant,
    from: SocketAddr,
    d: &[u8],
    h: &mut FixtureHost,
    s: &mut MemoryStateStore,
) -> Vec<(SocketAddr, Packet)> {
    ep.handle_datagram(now, from, d, h, s);
    let mut out = Vec::new();
    while let Some((to, bytes)) = ep.poll_transmit() {
        out.push((
            to,
            Packet::from_bytes(&bytes).expect("the endpoint sends valid CoAP"),
        ));
    }
    out
}

fn code(p: &Packet) -> u8 {
    p.header.code.into()
}

#[test]
fn answers_piggybacked_with_codes_formats_and_tokens() {
    let now = Instant::now();
    let mut ep = ControlEndpoint::new(EndpointConfig::new("test/alice", None), now);
    let (mut h, mut s) = (host(), MemoryStateStore::new(2));
    let out = feed(
        &mut ep,
        now,
        peer(),
        &request(7, Method::Get, "/modules/source/stats", b""),
        &mut h,
        &mut s,
    );
    assert_eq!(out.len(), 1);
    let (to, p) = &out[0];
    assert_eq!(*to, peer());
    assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
    assert_eq!(p.header.message_id, 7);
    assert_eq!(p.get_token(), &[1, 2, 3]);
    assert_eq!(code(p), Status::Content.code());
    assert_eq!(
        p.get_first_option(CoapOption::ContentFormat)
            .and_then(|v| decode_uint(v)),
        Some(50)
    );
    assert!(String::from_utf8_lossy(&p.payload).contains("\"name\":\"blocks\""));

    let out = feed(
        &mut ep,
        now,
        peer(),
        &request(8, Method::Get, "/modules/nothing/stats", b""),
        &mut h,
        &mut s,
    );
    assert_eq!(code(&out[0].1), Status::NotFound.code());
    assert_eq!(out[0].1.payload, b"no module `nothing`");

    // NON requests get NON answers.
    let d = encode_request(
        MessageType::NonConfirmable,
        9,
        &[9],
        Method::Get,
        "/modules",
        None,
        b"",
        None,
    )
    .unwrap();
    let out = feed(&mut ep, now, peer(), &d, &mut h, &mut s);
    assert_eq!(out[0].1.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(out[0].1.payload, b"[\"source\"]");

    // An unknown critical option is refused; an empty CON (a ping) is reset.
    let mut p = Packet::from_bytes(&request(10, Method::Get, "/modules", b"")).unwrap();
    p.add_option(CoapOption::Unknown(2049), vec![1]);
    let out = feed(&mut ep, now, peer(), &p.to_bytes().unwrap(), &mut h, &mut s);
    assert_eq!(code(&out[0].1), Status::BadOption.code());
    let out = feed(&mut ep, now, peer(), &[0x40, 0, 0, 11], &mut h, &mut s);
    assert_eq!(out[0].1.header.get_type(), MessageType::Reset);
    // A malformed CON is reset, a malformed NON dropped.
    let out = feed(&mut ep, now, peer(), &[0x4f, 0x01, 0, 12], &mut h, &mut s);
    assert_eq!(out[0].1.header.get_type(), MessageType::Reset);
    assert!(feed(&mut ep, now, peer(), &[0x5f, 0x01, 0, 13], &mut h, &mut s).is_empty());
}

#[test]
fn a_duplicate_request_is_answered_again_but_not_done_again() {
    let now = Instant::now();
    let mut ep = ControlEndpoint::new(EndpointConfig::new("test/alice", None), now);
    let (mut h, mut s) = (host(), MemoryStateStore::new(2));
    let put = request(
        21,
        Method::Put,
        "/modules/source/params/block_bits",
        b"1000",
    );
    let first = feed(&mut ep, now, peer(), &put, &mut h, &mut s);
    assert_eq!(code(&first[0].1), Status::Changed.code());
    h.source.block_bits = 2000;
    let again = feed(
        &mut ep,
        now + Duration::from_secs(2),
        peer(),
        &put,
        &mut h,
        &mut s,
    );
    assert_eq!(again[0].1, first[0].1);
    assert_eq!(
        h.source.block_bits, 2000,
        "the retransmission changed nothing"
    );
    // The same message ID from another peer is another request.
    let other: SocketAddr = "127.0.0.1:40002".parse().unwrap();
    feed(&mut ep, now, other, &put, &mut h, &mut s);
    assert_eq!(h.source.block_bits, 1000);
}

#[test]
fn observers_get_notifications_until_they_reset() {
    let t0 = Instant::now();
    let mut config = EndpointConfig::new("test/alice", None);
    config.observe_interval = Duration::from_millis(100);
    let mut ep = ControlEndpoint::new(config, t0);
    let (mut h, mut s) = (host(), MemoryStateStore::new(2));
    let mut p =
        Packet::from_bytes(&request(31, Method::Get, "/modules/source/stats", b"")).unwrap();
    p.add_option(CoapOption::Observe, vec![]);
    let out = feed(&mut ep, t0, peer(), &p.to_bytes().unwrap(), &mut h, &mut s);
    let first_seq = out[0]
        .1
        .get_first_option(CoapOption::Observe)
        .and_then(|v| decode_uint(v));
    assert!(first_seq.is_some(), "the answer carries Observe");
    assert_eq!(ep.observers(), 1);

    // Nothing changed: no notification.
    let t1 = t0 + Duration::from_millis(150);
    ep.handle_timeout(t1, &mut h, &mut s);
    assert!(ep.poll_transmit().is_none());

    h.source.step();
    let t2 = t1 + Duration::from_millis(150);
    ep.handle_timeout(t2, &mut h, &mut s);
    let (to, bytes) = ep.poll_transmit().expect("a notification");
    let n = Packet::from_bytes(&bytes).unwrap();
    assert_eq!(to, peer());
    assert_eq!(n.header.get_type(), MessageType::NonConfirmable);
    assert_eq!(n.get_token(), &[1, 2, 3]);
    let seq = n
        .get_first_option(CoapOption::Observe)
        .and_then(|v| decode_uint(v))
        .unwrap();
    assert!(seq > first_seq.unwrap());
    assert!(String::from_utf8_lossy(&n.payload).contains("{\"name\":\"blocks\",\"value\":1,"));

    // A Reset to the notification ends the observation.
    let [hi, lo] = n.header.message_id.to_be_bytes();
    feed(&mut ep, t2, peer(), &[0x70, 0, hi, lo], &mut h, &mut s);
    assert_eq!(ep.observers(), 0);
    h.source.step();
    ep.handle_timeout(t2 + Duration::from_millis(200), &mut h, &mut s);
    assert!(ep.poll_transmit().is_none());
}

#[test]
fn registration_is_sent_refreshed_and_its_answer_read() {
    let t0 = Instant::now();
    let mut config = EndpointConfig::new("ground-1/alice", Some(qpm()));
    config.refresh = Duration::from_secs(1);
    let mut ep = ControlEndpoint::new(config, t0);
    let (mut h, mut s) = (host(), MemoryStateStore::new(2));
    assert_eq!(ep.poll_timeout(), Some(t0));
    ep.handle_timeout(t0, &mut h, &mut s);
    let (to, bytes) = ep.poll_transmit().unwrap();
    assert_eq!(to, qpm());
    let p = Packet::from_bytes(&bytes).unwrap();
    assert_eq!(p.header.code, MessageClass::from(0x02));
    let path: Vec<&[u8]> = p
        .get_option(CoapOption::UriPath)
        .unwrap()
        .iter()
        .map(Vec::as_slice)
        .collect();
    assert_eq!(path, [b"hosts"]);
    let body: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(body["name"], "ground-1/alice");
    assert_eq!(body["pid"], std::process::id());
    assert_eq!(ep.registration(), &RegistrationState::Pending);

    let answer = |status: Status,
                  from: SocketAddr,
                  ep: &mut ControlEndpoint,
                  h: &mut FixtureHost,
                  s: &mut MemoryStateStore| {
        let mut a = Packet::new();
        a.header.set_version(1);
        a.header.set_type(MessageType::Acknowledgement);
        a.header.message_id = p.header.message_id;
        a.header.code = MessageClass::from(status.code());
        a.set_token(p.get_token().to_vec());
        a.payload = b"refused".to_vec();
        feed(ep, t0, from, &a.to_bytes().unwrap(), h, s);
    };
    answer(Status::Created, peer(), &mut ep, &mut h, &mut s);
    assert_eq!(
        ep.registration(),
        &RegistrationState::Pending,
        "only the QPM's answer counts"
    );
    answer(Status::Created, qpm(), &mut ep, &mut h, &mut s);
    assert_eq!(ep.registration(), &RegistrationState::Registered);
    answer(Status::Conflict, qpm(), &mut ep, &mut h, &mut s);
    assert_eq!(
        ep.registration(),
        &RegistrationState::Refused(Status::Conflict, "refused".into())
    );

    // Refreshed every second.
    assert_eq!(ep.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    ep.handle_timeout(t0 + Duration::from_secs(1), &mut h, &mut s);
    assert!(ep.poll_transmit().is_some());
}

#[test]
fn only_the_qpm_may_shut_a_host_down() {
    let now = Instant::now();
    let mut ep = ControlEndpoint::new(EndpointConfig::new("test/alice", Some(qpm())), now);
    let (mut h, mut s) = (host(), MemoryStateStore::new(2));
    let d = request(41, Method::Post, "/host/shutdown", b"");
    let out = feed(&mut ep, now, peer(), &d, &mut h, &mut s);
    assert_eq!(code(&out[0].1), Status::Forbidden.code());
    assert!(!ep.shutdown_requested());
    let out = feed(&mut ep, now, qpm(), &d, &mut h, &mut s);
    assert_eq!(code(&out[0].1), Status::Changed.code());
    assert!(ep.shutdown_requested());
}

/// A module with many parameters, so that its list needs several blocks.
struct Wide(Vec<u64>);

impl Module for Wide {
    fn name(&self) -> &str {
        "wide"
    }
    fn statistics(&self) -> Vec<Statistic> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, v)| Statistic::new(format!("counter_{i:03}"), Value::U64(*v), "bits"))
            .collect()
    }
    fn parameters(&self) -> Vec<ParameterInfo> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, v)| {
                ParameterInfo::writable(
                    format!("knob_{i:03}"),
                    Value::U64(*v),
                    "a knob with a long description",
                )
            })
            .collect()
    }
    fn set_parameter(&mut self, name: &str, value: &Value) -> Result<(), ParameterError> {
        let i: usize = name
            .strip_prefix("knob_")
            .and_then(|n| n.parse().ok())
            .filter(|&i| i < self.0.len())
            .ok_or_else(|| ParameterError::Unknown { name: name.into() })?;
        self.0[i] = value
            .as_u64()
            .ok_or_else(|| ParameterError::type_mismatch(name, "a count"))?;
        Ok(())
    }
}

struct WideHost(Wide);

impl ModuleHost for WideHost {
    type StateError = std::io::Error;
    fn module_names(&self) -> Vec<String> {
        vec!["wide".into()]
    }
    fn module(&self, name: &str) -> Option<&dyn Module> {
        (name == "wide").then_some(&self.0 as &dyn Module)
    }
    fn module_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        (name == "wide").then_some(&mut self.0 as &mut dyn Module)
    }
    fn save_state(&mut self) -> Result<Vec<u8>, std::io::Error> {
        Ok(self.0.0.iter().flat_map(|v| v.to_be_bytes()).collect())
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), std::io::Error> {
        if state.len() != self.0.0.len() * 8 {
            return Err(std::io::Error::other("wrong length"));
        }
        for (i, c) in state.chunks(8).enumerate() {
            self.0.0[i] = u64::from_be_bytes(c.try_into().unwrap());
        }
        Ok(())
    }
}

#[test]
fn large_answers_go_block_wise_over_a_real_socket() {
    let host = Arc::new(Mutex::new(WideHost(Wide((0..80).collect()))));
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let service = spawn(
        socket,
        EndpointConfig::new("wide", None),
        host.clone(),
        MemoryStateStore::new(2),
    )
    .unwrap();
    let addr = service.local_addr();

    // The first block, raw: Block2 with more set, Size2 the whole length.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.send_to(&request(51, Method::Get, "/modules/wide/params", b""), addr)
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = raw.recv_from(&mut buf).unwrap();
    assert!(n <= 1152, "a datagram of {n} bytes");
    let p = Packet::from_bytes(&buf[..n]).unwrap();
    let b = BlockOption::from_value(
        p.get_first_option(CoapOption::Block2)
            .and_then(|v| decode_uint(v))
            .unwrap(),
    );
    assert_eq!((b.num, b.more, b.size()), (0, true, 1024));
    let total = p
        .get_first_option(CoapOption::Size2)
        .and_then(|v| decode_uint(v))
        .unwrap() as usize;
    assert!(total > 3 * 1024);

    // The client fetches every block and gets the whole list.
    let mut client = CoapClient::new(Duration::from_secs(5)).unwrap();
    let r = client
        .request(addr, Method::Get, "/modules/wide/params", None, b"")
        .unwrap();
    assert_eq!(r.payload.len(), total);
    let params: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(params.as_array().unwrap().len(), 80);
    assert_eq!(params[79]["name"], "knob_079");

    // A block past the end is refused.
    let d = encode_request(
        MessageType::Confirmable,
        52,
        &[5],
        Method::Get,
        "/modules/wide/params",
        None,
        b"",
        Some(BlockOption {
            num: 99,
            more: false,
            szx: 6,
        }),
    )
    .unwrap();
    raw.send_to(&d, addr).unwrap();
    let (n, _) = raw.recv_from(&mut buf).unwrap();
    assert_eq!(
        code(&Packet::from_bytes(&buf[..n]).unwrap()),
        Status::BadOption.code()
    );

    // Parameters written over the socket reach the host.
    let r = client
        .request(
            addr,
            Method::Put,
            "/modules/wide/params/knob_003",
            None,
            b"77",
        )
        .unwrap();
    assert_eq!(r.status(), Some(Status::Changed));
    assert_eq!(host.lock().unwrap().0.0[3], 77);
    service.stop();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any datagram, and any bit flip of a valid request, is handled
    /// without a panic, and whatever is sent back is valid CoAP.
    #[test]
    fn arbitrary_datagrams_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..80),
        flip in any::<prop::sample::Index>(),
        path in prop_oneof![Just("/modules/source/params/block_bits"), Just("/pipeline/load"), Just("/modules")],
        method in 0u8..6,
    ) {
        let now = Instant::now();
        let mut ep = ControlEndpoint::new(EndpointConfig::new("test/alice", Some(qpm())), now);
        let (mut h, mut s) = (host(), MemoryStateStore::new(2));
        for d in [bytes.clone(), {
            let mut v = encode_request(MessageType::Confirmable, 1, &[1], Method::from_code_detail(method), path, Some(50), b"1000", None).unwrap();
            let i = flip.index(v.len());
            v[i] ^= 1 << (i % 8);
            v
        }] {
            ep.handle_datagram(now, peer(), &d, &mut h, &mut s);
            while let Some((_, out)) = ep.poll_transmit() {
                prop_assert!(Packet::from_bytes(&out).is_ok());
            }
        }
        ep.handle_timeout(now + Duration::from_secs(3), &mut h, &mut s);
    }
}

#[test]
fn host_control_args_start_the_service_and_register() {
    use clap::Parser;
    use qkd_examples::coap_service::HostControlArgs;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        control: HostControlArgs,
    }
    let qpm = UdpSocket::bind("127.0.0.1:0").unwrap();
    qpm.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let dir = std::env::temp_dir().join(format!("qkd-control-args-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let host = Arc::new(Mutex::new(host()));

    let none = Args::parse_from(["host"]);
    assert!(none.control.serve(host.clone()).unwrap().is_none());

    let qpm_addr = qpm.local_addr().unwrap().to_string();
    let args = Args::parse_from([
        "host",
        "--qpm",
        &qpm_addr,
        "--name",
        "ground-1/bob",
        "--state-dir",
        dir.to_str().unwrap(),
    ]);
    let service = args
        .control
        .serve(host.clone())
        .unwrap()
        .expect("a service");
    let mut buf = [0u8; 1280];
    let (n, from) = qpm.recv_from(&mut buf).unwrap();
    assert_eq!(from, service.local_addr());
    let p = Packet::from_bytes(&buf[..n]).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(body["name"], "ground-1/bob");

    // A save through the service lands in the state folder.
    let mut client = CoapClient::new(Duration::from_secs(5)).unwrap();
    let r = client
        .request(
            service.local_addr(),
            Method::Post,
            "/pipeline/save",
            None,
            b"",
        )
        .unwrap();
    assert_eq!(r.status(), Some(Status::Changed), "{}", r.text());
    assert!(dir.join("state-00000001.bin").is_file());
    service.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}
