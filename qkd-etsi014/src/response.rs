//! What the handler answers: [`Response`] (request ID, status code, JSON
//! body), the zeroizing [`Body`], and the messages of the standard.

use core::fmt;

use serde::Serialize;
use zeroize::Zeroizing;

use crate::model::{ErrorBody, KeyContainer, base64_len};
use crate::request::RequestId;

/// The messages ETSI GS QKD 014 fixes for 400 answers, and ours for the rest.
pub mod messages {
    /// 400: a size that is not whole bytes.
    pub const SIZE_NOT_MULTIPLE_OF_8: &str = "size shall be a multiple of 8";
    /// 400: an `extension_mandatory` member this KME does not support.
    pub const EXTENSION_MANDATORY_UNSUPPORTED: &str =
        "not all extension_mandatory parameters are supported";
    /// 400: `dec_keys` for keys this KME does not hold for the caller.
    pub const KEYS_NOT_FOUND: &str = "one or more keys specified are not found on KME";
    /// 401: `dec_keys` by an SAE not named as slave of the keys.
    pub const NOT_A_SLAVE: &str = "the calling SAE was not named as slave SAE (or additional \
         slave SAE) of one or more of the keys specified, or fetched them already";
    /// 401: the host passed no valid caller SAE ID.
    pub const NO_CALLER: &str = "the calling SAE could not be identified";
    /// 503: too many `dec_keys` requests wait for the peer KME.
    pub const TOO_MANY_WAITING: &str =
        "too many key requests are waiting for the peer KME; retry later";
    /// 404: a path outside the API.
    pub const NO_SUCH_RESOURCE: &str = "no such resource: the API serves \
         /api/v1/keys/{SAE_ID}/status, /api/v1/keys/{SAE_ID}/enc_keys and \
         /api/v1/keys/{SAE_ID}/dec_keys";
}

/// The `Content-Type` of every response body.
pub const CONTENT_TYPE: &str = "application/json";

/// A response body: JSON bytes that are zeroized when dropped (they hold
/// key material after a successful `enc_keys` or `dec_keys`).
///
/// It is `AsRef<[u8]>`, `Send` and `'static`, so an HTTP stack can send it
/// without copying, e.g. `bytes::Bytes::from_owner(response.into_body())`.
pub struct Body(Zeroizing<Vec<u8>>);

impl Body {
    /// The bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("len", &self.0.len())
            .finish_non_exhaustive()
    }
}

/// One answer: the request it answers, the HTTP status code and a JSON body
/// (always present; an [`ErrorBody`] for every 4xx and 5xx). Send it with
/// `Content-Type: application/json` ([`CONTENT_TYPE`]) and, when
/// [`allow`](Self::allow) is set (405), an `Allow` header with that value.
#[derive(Debug)]
pub struct Response {
    request: RequestId,
    status: u16,
    body: Body,
    allow: Option<&'static str>,
}

impl Response {
    /// The request answered.
    #[must_use]
    pub fn request(&self) -> RequestId {
        self.request
    }

    /// The HTTP status code.
    #[must_use]
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The JSON body.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        self.body.as_bytes()
    }

    /// The methods allowed on the path, for the `Allow` header of a 405.
    #[must_use]
    pub fn allow(&self) -> Option<&'static str> {
        self.allow
    }

    /// The body, to be sent without a copy (zeroized when dropped).
    #[must_use]
    pub fn into_body(self) -> Body {
        self.body
    }

    pub(crate) fn json<T: Serialize>(
        request: RequestId,
        status: u16,
        value: &T,
        capacity: usize,
    ) -> Self {
        let mut buf = Zeroizing::new(Vec::with_capacity(capacity));
        if serde_json::to_writer(&mut *buf, value).is_err() {
            // Not reachable for the types written here (no maps with
            // non-string keys, no failing Serialize impls); answer cleanly
            // all the same.
            buf.clear();
            buf.extend_from_slice(br#"{"message":"internal error: response not encodable"}"#);
            return Response {
                request,
                status: 500,
                body: Body(buf),
                allow: None,
            };
        }
        Response {
            request,
            status,
            body: Body(buf),
            allow: None,
        }
    }

    pub(crate) fn error(request: RequestId, status: u16, body: &ErrorBody) -> Self {
        Response::json(request, status, body, 64 + body.message.len())
    }

    pub(crate) fn with_allow(mut self, allow: &'static str) -> Self {
        self.allow = Some(allow);
        self
    }

    /// A key container, written into a buffer sized beforehand so that it
    /// never reallocates (a reallocation would leave a copy of the keys in
    /// freed memory).
    pub(crate) fn keys(request: RequestId, container: &KeyContainer) -> Self {
        Response::json(request, 200, container, container_capacity(container))
    }
}

/// An upper bound of the JSON length of `c` (keys without extensions are
/// exact up to the constant; extensions are not written by the handler).
pub(crate) fn container_capacity(c: &KeyContainer) -> usize {
    // {"keys":[ ... ]}  and per key {"key_ID":"<36>","key":"<b64>"},
    const OUTER: usize = r#"{"keys":[]}"#.len();
    const PER_KEY: usize = r#"{"key_ID":"","key":""},"#.len() + 36;
    OUTER
        + c.keys
            .iter()
            .map(|k| PER_KEY + base64_len(k.key.len()))
            .sum::<usize>()
        + 16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Key;
    use proptest::prelude::*;
    use qkd_core::{KeyId, SecretKey};

    fn container(lens: &[usize]) -> KeyContainer {
        KeyContainer {
            keys: lens
                .iter()
                .enumerate()
                .map(|(i, &n)| Key {
                    key_id: KeyId::for_block(b"t", i as u64, 0),
                    key_id_extension: None,
                    key: SecretKey::from_vec(vec![0xa5; n]),
                    key_extension: None,
                })
                .collect(),
            key_container_extension: None,
        }
    }

    proptest! {
        /// The buffer is sized beforehand: writing the keys never
        /// reallocates (which would leave a copy of them in freed memory).
        #[test]
        fn key_bodies_never_reallocate(lens in proptest::collection::vec(0usize..3000, 1..40)) {
            let c = container(&lens);
            let capacity = container_capacity(&c);
            let r = Response::keys(RequestId(1), &c);
            prop_assert_eq!(r.body.0.capacity(), capacity);
            prop_assert!(r.body().len() <= capacity);
        }
    }

    #[test]
    fn bodies_are_redacted_in_debug() {
        let r = Response::keys(RequestId(7), &container(&[32]));
        let shown = format!("{r:?}");
        assert!(shown.contains("len") && !shown.contains("paWl"), "{shown}");
        assert_eq!(r.status(), 200);
        assert_eq!(r.into_body().as_ref().first(), Some(&b'{'));
    }
}
