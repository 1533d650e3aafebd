//! What the handler takes: [`Request`] (the parts of an HTTP request the
//! API needs, with the caller's SAE ID from the TLS client certificate),
//! and the decoding of paths, query strings and SAE IDs.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Longest SAE (or KME) ID accepted, in bytes (as qkd-keystore's bindings).
pub const MAX_SAE_ID_LEN: usize = 255;

/// The host's name for one request; the response carries it back. The
/// host keeps it unique among the requests not yet answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// One HTTP request, as the host received it.
///
/// `path` and `query` are as on the wire (percent-encoded; the handler
/// decodes them), `query` without the `?` and empty when there is none.
/// `caller` is the SAE ID the host took from the verified client
/// certificate. `body` is what the host read, at most
/// [`KmeConfig::max_body_bytes`](crate::KmeConfig::max_body_bytes) plus one
/// byte (the handler answers 400 to a longer one; the host need not read
/// further).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The host's name for the request.
    pub id: RequestId,
    /// The HTTP method, e.g. `"GET"` or `"POST"` (case-sensitive, as HTTP).
    pub method: &'a str,
    /// The path, e.g. `/api/v1/keys/sae-b/enc_keys`.
    pub path: &'a str,
    /// The query string without `?`, e.g. `number=2&size=256`, or `""`.
    pub query: &'a str,
    /// The request body.
    pub body: &'a [u8],
    /// The authenticated caller's SAE ID.
    pub caller: &'a str,
}

/// The three methods of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Status,
    EncKeys,
    DecKeys,
}

impl Operation {
    pub(crate) fn allowed(self) -> &'static str {
        match self {
            Operation::Status => "GET",
            Operation::EncKeys | Operation::DecKeys => "GET, POST",
        }
    }
}

/// The operation and the (still encoded) SAE ID of an API path.
pub(crate) fn route(path: &str) -> Option<(Operation, &str)> {
    let rest = path.strip_prefix("/api/v1/keys/")?;
    let (sae, op) = rest.split_once('/')?;
    let op = match op {
        "status" => Operation::Status,
        "enc_keys" => Operation::EncKeys,
        "dec_keys" => Operation::DecKeys,
        _ => return None,
    };
    Some((op, sae))
}

/// Why an SAE ID was refused.
pub(crate) fn check_sae_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("is empty");
    }
    if id.len() > MAX_SAE_ID_LEN {
        return Err("is longer than 255 bytes");
    }
    if id.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    Ok(())
}

/// Percent-decodes `s` as UTF-8.
pub(crate) fn decode(s: &str) -> Option<Cow<'_, str>> {
    percent_decode_str(s).decode_utf8().ok()
}

/// The `name=value` pairs of a query string, decoded (`+` is a space, as
/// in HTML forms).
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, &'static str> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let text = |s: &str| decode(&s.replace('+', " ")).map(Cow::into_owned);
        let (Some(name), Some(value)) = (text(name), text(value)) else {
            return Err("a query parameter is not valid percent-encoded UTF-8");
        };
        pairs.push((name, value));
    }
    Ok(pairs)
}
