//! Request plumbing: the query string, bodies (size limit, media types), and responses.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use serde_json::Value;

use crate::api::status::ApiError;

/// The response body type of every handler.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;
/// A response.
pub type Resp = Response<Body>;

/// Request bodies over this are refused before parsing (413), as Kubernetes does.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Parsed query parameters (repeated keys keep every value).
#[derive(Debug, Default)]
pub struct Query(HashMap<String, Vec<String>>);

impl Query {
    /// Parses a raw query string.
    pub fn parse(q: Option<&str>) -> Query {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            m.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Query(m)
    }

    /// The first value of a parameter.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).and_then(|v| v.first()).map(String::as_str)
    }

    /// A boolean parameter (`true`/`1`).
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | "True"))
    }

    /// An integer parameter; a malformed one is a 400.
    pub fn int(&self, k: &str) -> Result<Option<i64>, ApiError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ApiError::bad_request(format!("invalid value {v:?} for {k}"))),
        }
    }
}

/// Past the limit, bytes read and thrown away so the client sees the 413 (a client
/// still writing would otherwise get a broken pipe); beyond this the connection drops.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// How long a request's body may take to arrive: kube-apiserver's default
/// `--request-timeout`.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads a body up to [`MAX_BODY`]; a larger one is refused (413) without being kept
/// or parsed, one that has not arrived within [`BODY_TIMEOUT`] gets 408.
pub async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(BODY_TIMEOUT, read_body_now(headers, body)).await {
        Ok(r) => r,
        Err(_) => {
            Err(ApiError::request_timeout(format!("request body not received within {}s", BODY_TIMEOUT.as_secs())))
        }
    }
}

async fn read_body_now<B>(headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let mut too_big = declared.is_some_and(|l| l > MAX_BODY);
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("reading request body: {}", e.into())))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen > MAX_BODY {
                too_big = true;
            }
            if too_big {
                buf.clear();
                if seen > DRAIN_LIMIT {
                    break;
                }
            } else {
                buf.extend_from_slice(&data);
            }
        }
    }
    if too_big {
        return Err(ApiError::too_large(MAX_BODY));
    }
    Ok(buf.freeze())
}

/// The media type of a request, without parameters.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Decodes an object body per its Content-Type (JSON, YAML or Kubernetes protobuf);
/// also returns the duplicate keys of a JSON body, for strict field validation.
pub fn decode_object(ct: &str, body: &[u8]) -> Result<(Value, Vec<String>), ApiError> {
    let mut dups = Vec::new();
    let v: Value = match ct {
        "application/json" | "" | "*/*" => {
            let (v, d) = crate::api::validation::parse_json(body).map_err(|e| {
                ApiError::bad_request(format!("the object provided is unrecognized: couldn't decode JSON: {e}"))
            })?;
            dups = d;
            v
        }
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_norway::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the object provided is unrecognized: couldn't decode YAML: {e}"))
        })?,
        crate::api::protobuf::MEDIA_TYPE => crate::api::protobuf::decode(body).map_err(|e| {
            ApiError::bad_request(format!("the object provided is unrecognized: couldn't decode protobuf: {e}"))
        })?,
        other => {
            return Err(ApiError::unsupported_media_type(
                other,
                &["application/json", "application/yaml", crate::api::protobuf::MEDIA_TYPE],
            ));
        }
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the object provided is unrecognized: expected a JSON object"));
    }
    Ok((v, dups))
}

/// A full JSON response.
pub fn json(code: u16, v: &Value) -> Resp {
    bytes_response(code, "application/json", Bytes::from(serde_json::to_vec(v).unwrap_or_default()))
}

/// A response with a fixed body.
pub fn bytes_response(code: u16, ct: &str, body: Bytes) -> Resp {
    let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("text/plain")));
    r
}

/// The Status response for an error.
pub fn error(e: &ApiError) -> Resp {
    let mut r = json(e.code, &e.to_status());
    if let Some(s) = e.retry_after {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

/// Adds `Warning: 299 - "..."` headers.
pub fn with_warnings(mut r: Resp, warnings: &[String]) -> Resp {
    for w in warnings {
        let v = format!("299 - {:?}", w);
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

/// What the client asked to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Plain JSON objects.
    Object,
    /// A `meta.k8s.io` Table.
    Table,
}

/// Reads the Accept header: a Table if asked for (`as=Table;g=meta.k8s.io`).
pub fn want(headers: &HeaderMap) -> Want {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    for part in accept.split(',') {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        if params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io") {
            return Want::Table;
        }
        if params.first().is_some_and(|m| *m == "application/json" || *m == "*/*")
            && !params.iter().any(|p| p.starts_with("as="))
        {
            return Want::Object;
        }
    }
    Want::Object
}
