//! The HTTP prober: one GET on a fresh connection, judged by status and optionally by body.
//!
//! As the kubelet: no keep-alive, redirects followed only to the same host (a redirect elsewhere
//! is judged by its own status), statuses 200–399 pass by default.

use std::fmt;
use std::str::FromStr;

use http::header::{ACCEPT, HOST, USER_AGENT};
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::tls::{Alpn, TlsConfigs, server_name};
use super::{Cause, Outcome, PortRef, Reason, Target, Trace, effective_port, net};

/// Redirects followed at most.
pub const MAX_REDIRECTS: usize = 10;
/// Bytes of body read when the body must match.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A validated HTTP probe.
#[derive(Clone, Debug)]
pub struct HttpSpec {
    /// Path and query, starting with `/`.
    pub path: String,
    /// Port, unless the target gives one.
    pub port: Option<PortRef>,
    /// HTTPS.
    pub tls: bool,
    /// Extra request headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Statuses that pass.
    pub expected: StatusRanges,
    /// Body condition.
    pub body: Option<BodyMatcher>,
    /// Follow same-host redirects.
    pub follow_redirects: bool,
    /// Accept any certificate.
    pub insecure_skip_verify: bool,
}

impl HttpSpec {
    /// A GET of `path` with the defaults of the API.
    pub fn get(path: impl Into<String>) -> HttpSpec {
        HttpSpec {
            path: path.into(),
            port: None,
            tls: false,
            headers: Vec::new(),
            expected: StatusRanges::default(),
            body: None,
            follow_redirects: true,
            insecure_skip_verify: false,
        }
    }
}

/// Status codes that pass: a list of inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRanges(Vec<(u16, u16)>);

impl Default for StatusRanges {
    fn default() -> Self {
        StatusRanges(vec![(200, 399)])
    }
}

impl StatusRanges {
    /// Whether `code` passes.
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&code))
    }
}

impl FromStr for StatusRanges {
    type Err = String;

    /// Parses `200-399` or `200,204,301-302`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let parse = |v: &str| -> Result<u16, String> {
                match v.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => Ok(code),
                    _ => Err(format!("{v:?} is not an HTTP status code (100-599)")),
                }
            };
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            if lo > hi {
                return Err(format!("range {part:?} is empty: {lo} is above {hi}"));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusRanges(ranges))
    }
}

impl fmt::Display for StatusRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi { write!(f, "{lo}")? } else { write!(f, "{lo}-{hi}")? }
        }
        Ok(())
    }
}

/// A condition on the response body.
#[derive(Clone, Debug)]
pub enum BodyMatcher {
    /// The body contains this text.
    Contains(String),
    /// The body matches this expression.
    Regex(regex::Regex),
}

impl BodyMatcher {
    fn matches(&self, body: &str) -> bool {
        match self {
            BodyMatcher::Contains(text) => body.contains(text.as_str()),
            BodyMatcher::Regex(re) => re.is_match(body),
        }
    }

    fn describe(&self) -> String {
        match self {
            BodyMatcher::Contains(text) => format!("contain {text:?}"),
            BodyMatcher::Regex(re) => format!("match /{}/", re.as_str()),
        }
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Url {
    fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }

    /// The `Host` header: the port only when it is not the scheme's default.
    fn authority(&self) -> String {
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() { host } else { format!("{host}:{}", self.port) }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

struct Response {
    status: StatusCode,
    location: Option<String>,
    body: Vec<u8>,
}

pub(crate) async fn probe(
    spec: &HttpSpec,
    target: &Target,
    tls: &TlsConfigs,
    user_agent: &HeaderValue,
    trace: &mut Trace,
) -> Outcome {
    let default_port = if spec.tls { 443 } else { 80 };
    let port = match effective_port(target, spec.port.as_ref(), Some(default_port)) {
        Ok(port) => port,
        Err(e) => return Outcome::unknown(Cause::Misconfigured, e),
    };
    let mut url =
        Url { tls: spec.tls, host: net::bare_host(&target.host).to_owned(), port, path: spec.path.clone() };
    let mut hops = 0;
    loop {
        let response = match exchange(&url, spec, target, tls, user_agent, trace).await {
            Ok(response) => response,
            Err(outcome) => return outcome,
        };
        if response.status.is_redirection()
            && spec.follow_redirects
            && let Some(next) = response.location.as_deref().and_then(|loc| follow(&url, loc))
        {
            if next.host.eq_ignore_ascii_case(&url.host) {
                if hops == MAX_REDIRECTS {
                    return Outcome::unhealthy(
                        Reason::Redirect,
                        format!("more than {MAX_REDIRECTS} redirects"),
                    );
                }
                hops += 1;
                trace.step("redirect", || format!("{} to {next}", response.status.as_u16()));
                url = next;
                continue;
            }
            trace.step("redirect", || format!("not followed: {next} is another host"));
        }
        return judge(spec, &url, response, trace);
    }
}

fn judge(spec: &HttpSpec, url: &Url, response: Response, trace: &mut Trace) -> Outcome {
    let status = response.status;
    let line = format!("HTTP {} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let line = line.trim_end().to_owned();
    if !spec.expected.contains(status.as_u16()) {
        return Outcome::unhealthy(Reason::Status, format!("{line} from {url}, expected {}", spec.expected));
    }
    if let Some(matcher) = &spec.body {
        let text = String::from_utf8_lossy(&response.body);
        let ok = matcher.matches(&text);
        trace.step("body", || {
            format!("{} bytes read, {}", response.body.len(), if ok { "matched" } else { "no match" })
        });
        if !ok {
            return Outcome::unhealthy(
                Reason::Body,
                format!(
                    "{line}, but the body does not {} (first {} bytes read)",
                    matcher.describe(),
                    response.body.len()
                ),
            );
        }
    }
    Outcome::healthy(line)
}

/// Resolves a `Location` header against the current URL.
fn follow(current: &Url, location: &str) -> Option<Url> {
    let location = location.trim();
    let absolute = if location.starts_with("//") {
        format!("{}:{location}", if current.tls { "https" } else { "http" })
    } else {
        location.to_owned()
    };
    if absolute.starts_with("http://") || absolute.starts_with("https://") {
        let uri: Uri = absolute.parse().ok()?;
        let tls = uri.scheme_str() == Some("https");
        let authority = uri.authority()?;
        let host = net::bare_host(authority.host()).to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".to_owned());
        return Some(Url { tls, host, port, path: if path.is_empty() { "/".to_owned() } else { path } });
    }
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        // Relative reference: replace the last segment of the current path.
        let base = current.path.split(['?', '#']).next().unwrap_or("/");
        let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{location}", if dir.is_empty() { "/" } else { dir })
    };
    Some(Url { path, ..current.clone() })
}

async fn exchange(
    url: &Url,
    spec: &HttpSpec,
    target: &Target,
    tls: &TlsConfigs,
    user_agent: &HeaderValue,
    trace: &mut Trace,
) -> Result<Response, Outcome> {
    let addrs = net::resolve(&url.host, url.port, target.policy, trace).await?;
    let mut stream = net::ResetOnClose(net::connect(&addrs, trace).await?);
    let request = request_bytes(url, spec, user_agent);
    let read_body = spec.body.is_some();
    if url.tls {
        let config =
            tls.get(Alpn::Http1, spec.insecure_skip_verify).map_err(|e| Outcome::unknown(Cause::Local, e))?;
        let name = server_name(&url.host).map_err(|e| Outcome::unknown(Cause::Misconfigured, e))?;
        let mut stream = match TlsConnector::from(config).connect(name, stream).await {
            Ok(stream) => stream,
            Err(e) => {
                trace.step("tls", || format!("failed: {e}"));
                return Err(Outcome::unhealthy(
                    Reason::Tls,
                    format!("TLS handshake with {}: {e}", url.authority()),
                ));
            }
        };
        trace.step("tls", || {
            let (_, session) = stream.get_ref();
            format!(
                "{}, {}",
                session.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
                session.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default(),
            )
        });
        send(&mut stream, &request, read_body, trace).await
    } else {
        send(&mut stream, &request, read_body, trace).await
    }
}

/// The request: a GET with `Host`, `User-Agent`, `Accept`, the probe's own headers (which win)
/// and `Connection: close`.
fn request_bytes(url: &Url, spec: &HttpSpec, user_agent: &HeaderValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + url.path.len());
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(url.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut header = |name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    let own = |name: &HeaderName| spec.headers.iter().any(|(n, _)| n == name);
    if !own(&HOST) {
        header(b"Host", url.authority().as_bytes());
    }
    if !own(&USER_AGENT) {
        header(b"User-Agent", user_agent.as_bytes());
    }
    if !own(&ACCEPT) {
        header(b"Accept", b"*/*");
    }
    for (name, value) in &spec.headers {
        header(name.as_str().as_bytes(), value.as_bytes());
    }
    // Never keep the connection: probes must not reuse a possibly stale socket.
    header(b"Connection", b"close");
    out.extend_from_slice(b"\r\n");
    out
}

/// Largest response head read.
const HEAD_LIMIT: usize = 64 * 1024;
/// Most response headers parsed.
const MAX_HEADERS: usize = 64;

fn io_outcome(what: &str, e: &std::io::Error) -> Outcome {
    Outcome::unhealthy(net::io_reason(e), format!("{what}: {e}"))
}

/// Writes the request and reads the response head (and, when asked, the first
/// [`BODY_LIMIT`] bytes of the body). The connection is dropped afterwards, unread data and all:
/// it is reset, never reused.
async fn send<S>(io: &mut S, request: &[u8], read_body: bool, trace: &mut Trace) -> Result<Response, Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(request).await.map_err(|e| io_outcome("sending the request", &e))?;
    let mut buf: Vec<u8> = vec![0; 2048];
    let mut len = 0;
    loop {
        if len == buf.len() {
            if buf.len() >= HEAD_LIMIT {
                return Err(Outcome::unhealthy(
                    Reason::Protocol,
                    format!("response head larger than {HEAD_LIMIT} bytes"),
                ));
            }
            buf.resize((buf.len() * 2).min(HEAD_LIMIT), 0);
        }
        let n = io.read(&mut buf[len..]).await.map_err(|e| io_outcome("reading the response", &e))?;
        if n == 0 {
            trace.step("first-byte", || format!("connection closed after {len} bytes"));
            let what = if len == 0 {
                "the connection was closed before any response"
            } else {
                "the connection was closed in the middle of the response head"
            };
            return Err(Outcome::unhealthy(Reason::Reset, what));
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf[..len]) {
            Ok(httparse::Status::Partial) => continue,
            Err(e) => {
                trace.step("first-byte", || format!("not HTTP: {e}"));
                return Err(Outcome::unhealthy(Reason::Protocol, format!("not a valid HTTP response: {e}")));
            }
            Ok(httparse::Status::Complete(head_len)) => {
                let code = response.code.unwrap_or(0);
                if (100..200).contains(&code) && code != 101 {
                    // An interim response (100 Continue…): the final one follows.
                    buf.copy_within(head_len..len, 0);
                    len -= head_len;
                    continue;
                }
                let status = StatusCode::from_u16(code).map_err(|_| {
                    Outcome::unhealthy(Reason::Protocol, format!("invalid status code {code}"))
                })?;
                trace.step("first-byte", || format!("HTTP/1.{} {status}", response.version.unwrap_or(1)));
                let header = |name: &str| {
                    response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(str::trim)
                };
                let location = header("location").map(str::to_owned);
                let framing = if header("transfer-encoding")
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
                {
                    Framing::Chunked
                } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
                    Framing::Length(n)
                } else {
                    Framing::UntilClose
                };
                let body = if read_body {
                    buf.copy_within(head_len..len, 0);
                    buf.truncate(len - head_len);
                    read_body_from(io, buf, framing).await?
                } else {
                    Vec::new()
                };
                return Ok(Response { status, location, body });
            }
        }
    }
}

/// How the body's end is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Reads the body (raw bytes already read in `raw`) up to [`BODY_LIMIT`] decoded bytes.
async fn read_body_from<S>(io: &mut S, mut raw: Vec<u8>, framing: Framing) -> Result<Vec<u8>, Outcome>
where
    S: AsyncRead + Unpin,
{
    let mut chunk = [0u8; 8192];
    loop {
        let (body, complete) = decode(&raw, framing);
        if complete || body.len() >= BODY_LIMIT {
            let mut body = body;
            body.truncate(BODY_LIMIT);
            return Ok(body);
        }
        let n = io.read(&mut chunk).await.map_err(|e| io_outcome("reading the body", &e))?;
        if n == 0 {
            // The server closed: what arrived is the body (complete when framed by the close).
            return Ok(decode(&raw, framing).0);
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// The decoded body in `raw` so far, and whether it is complete.
fn decode(raw: &[u8], framing: Framing) -> (Vec<u8>, bool) {
    match framing {
        Framing::Length(n) => (raw[..raw.len().min(n)].to_vec(), raw.len() >= n),
        Framing::UntilClose => (raw.to_vec(), false),
        Framing::Chunked => {
            let mut body = Vec::new();
            let mut rest = raw;
            loop {
                let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else { return (body, false) };
                let size_text = std::str::from_utf8(&rest[..line_end]).unwrap_or("");
                let size_text = size_text.split(';').next().unwrap_or("").trim();
                let Ok(size) = usize::from_str_radix(size_text, 16) else { return (body, true) };
                if size == 0 {
                    return (body, true);
                }
                let data = &rest[line_end + 2..];
                if data.len() < size {
                    body.extend_from_slice(data);
                    return (body, false);
                }
                body.extend_from_slice(&data[..size]);
                rest = data.get(size + 2..).unwrap_or(&[]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse_and_match() {
        let r: StatusRanges = "200,204,301-302".parse().unwrap();
        assert!(r.contains(200) && r.contains(204) && r.contains(301) && r.contains(302));
        assert!(!r.contains(201) && !r.contains(303));
        assert_eq!(r.to_string(), "200,204,301-302");
        assert!(StatusRanges::default().contains(399) && !StatusRanges::default().contains(400));
        assert!("399-200".parse::<StatusRanges>().unwrap_err().contains("empty"));
        assert!("abc".parse::<StatusRanges>().unwrap_err().contains("not an HTTP status"));
        assert!("700".parse::<StatusRanges>().is_err());
    }

    #[test]
    fn bodies_decode_by_their_framing() {
        assert_eq!(decode(b"hello world", Framing::Length(5)), (b"hello".to_vec(), true));
        assert_eq!(decode(b"hel", Framing::Length(5)), (b"hel".to_vec(), false));
        let chunked = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        assert_eq!(decode(chunked, Framing::Chunked), (b"hello world".to_vec(), true));
        assert_eq!(decode(&chunked[..12], Framing::Chunked), (b"hello".to_vec(), false));
        assert_eq!(decode(b"abc", Framing::UntilClose), (b"abc".to_vec(), false));
    }

    #[test]
    fn requests_close_and_let_the_probe_headers_win() {
        let url = Url { tls: false, host: "10.0.0.1".into(), port: 8080, path: "/healthz?x=1".into() };
        let mut spec = HttpSpec::get("/healthz?x=1");
        let ua = HeaderValue::from_static("vigil/test");
        let text = String::from_utf8(request_bytes(&url, &spec, &ua)).unwrap();
        assert_eq!(
            text,
            "GET /healthz?x=1 HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: vigil/test\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        spec.headers = vec![(HOST, HeaderValue::from_static("web.internal"))];
        let text = String::from_utf8(request_bytes(&url, &spec, &ua)).unwrap();
        assert!(text.contains("\r\nhost: web.internal\r\n") && !text.contains("10.0.0.1"), "{text}");
    }

    #[test]
    fn locations_resolve_against_the_current_url() {
        let base = Url { tls: false, host: "127.0.0.1".into(), port: 8080, path: "/a/b?x=1".into() };
        assert_eq!(follow(&base, "/c").unwrap().path, "/c");
        assert_eq!(follow(&base, "c").unwrap().path, "/a/c");
        let abs = follow(&base, "https://example.com/z").unwrap();
        assert_eq!(
            (abs.tls, abs.host.as_str(), abs.port, abs.path.as_str()),
            (true, "example.com", 443, "/z")
        );
        let rel = follow(&base, "//127.0.0.1:9/y").unwrap();
        assert_eq!((rel.host.as_str(), rel.port, rel.path.as_str()), ("127.0.0.1", 9, "/y"));
        let v6 = follow(&base, "http://[::1]:81/").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.authority(), "[::1]:81");
    }
}
