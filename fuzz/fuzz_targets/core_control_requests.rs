//! The control surface of qkd-core: any request (method, path segments with
//! any bytes, content format, Accept, payload) decoded and carried out on a
//! small host. Every request gets a status; a refused one changes nothing and
//! answers with a UTF-8 diagnostic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qkd_core::control::{Command, MemoryStateStore, Method, Request, StateStore, respond};
use qkd_core::module::{Module, ModuleHost, ParameterError, ParameterInfo, Statistic, Value};

#[derive(Clone, Debug, PartialEq)]
struct Gate {
    max_qber: f64,
    variant: String,
}

impl Module for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    fn statistics(&self) -> Vec<Statistic> {
        vec![Statistic::new("max_qber_now", Value::F64(self.max_qber), "ratio")]
    }
    fn parameters(&self) -> Vec<ParameterInfo> {
        vec![
            ParameterInfo::writable("max_qber", Value::F64(self.max_qber), "0..0.5"),
            ParameterInfo::writable("variant", Value::Text(self.variant.clone()), "a or b"),
            ParameterInfo::read_only("block_bits", Value::U64(4096), "fixed"),
        ]
    }
    fn set_parameter(&mut self, name: &str, value: &Value) -> Result<(), ParameterError> {
        match name {
            "max_qber" => {
                let q = value
                    .as_f64()
                    .ok_or_else(|| ParameterError::type_mismatch(name, "a number"))?;
                qkd_core::machine::check_range(name, q, 0.0..0.5)?;
                self.max_qber = q;
                Ok(())
            }
            "variant" => match value.as_str() {
                Some(v @ ("a" | "b")) => {
                    self.variant = v.to_owned();
                    Ok(())
                }
                _ => Err(ParameterError::type_mismatch(name, "a or b")),
            },
            "block_bits" => Err(ParameterError::ReadOnly { name: name.into() }),
            _ => Err(ParameterError::Unknown { name: name.into() }),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
struct Host(Gate);

impl ModuleHost for Host {
    type StateError = std::io::Error;
    fn module_names(&self) -> Vec<String> {
        vec!["gate".into()]
    }
    fn module(&self, name: &str) -> Option<&dyn Module> {
        (name == "gate").then_some(&self.0 as &dyn Module)
    }
    fn module_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        (name == "gate").then_some(&mut self.0 as &mut dyn Module)
    }
    fn save_state(&mut self) -> Result<Vec<u8>, std::io::Error> {
        Ok(self.0.max_qber.to_be_bytes().to_vec())
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), std::io::Error> {
        let b: [u8; 8] = state.try_into().map_err(|_| std::io::Error::other("corrupt"))?;
        let q = f64::from_be_bytes(b);
        if !(0.0..0.5).contains(&q) {
            return Err(std::io::Error::other("out of range"));
        }
        self.0.max_qber = q;
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // Layout: method, content-format selector, accept selector, then path
    // segments separated by '/', then 0x00 and the payload.
    let [method, cf, accept, rest @ ..] = data else {
        return;
    };
    let (path, payload) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let pick = |b: u8| match b % 5 {
        0 => None,
        1 => Some(0u16),
        2 => Some(40),
        3 => Some(50),
        _ => Some(u16::from(b)),
    };
    let request = Request {
        method: Method::from_code_detail(*method % 8),
        segments: path.split(|&b| b == b'/').filter(|s| !s.is_empty()).collect(),
        content_format: pick(*cf),
        accept: pick(*accept),
        payload,
    };
    let decoded = Command::decode(&request);
    let mut host = Host(Gate {
        max_qber: 0.11,
        variant: "a".into(),
    });
    let mut states = MemoryStateStore::new(2);
    states.store(&0.2f64.to_be_bytes()).unwrap();
    states.store(payload).unwrap();
    let before = host.clone();
    let answer = respond(&mut host, &mut states, &request);
    assert!(decoded.is_ok() || !answer.status.is_success());
    if !answer.status.is_success() {
        assert_eq!(host, before);
        assert!(answer.content_format.is_none());
        assert!(std::str::from_utf8(&answer.payload).is_ok());
    }
});
