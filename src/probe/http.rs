//! The HTTP prober: one GET on a fresh connection, judged by status and optionally by body.
//!
//! As the kubelet: no keep-alive, redirects followed only to the same host (a redirect elsewhere
//! is judged by its own status), statuses 200–399 pass by default.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, LOCATION, USER_AGENT};
use http::{HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsConnector;

use super::tls::{Alpn, TlsConfigs, server_name};
use super::{Outcome, PortRef, Reason, Target, Trace, effective_port, net};

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
    user_agent: &str,
    trace: &mut Trace,
) -> Outcome {
    let default_port = if spec.tls { 443 } else { 80 };
    let port = match effective_port(target, spec.port.as_ref(), Some(default_port)) {
        Ok(port) => port,
        Err(e) => return Outcome::unknown(e),
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
    user_agent: &str,
    trace: &mut Trace,
) -> Result<Response, Outcome> {
    let addrs = net::resolve(&url.host, url.port, target.policy, trace).await?;
    let stream = net::ResetOnClose(net::connect(&addrs, trace).await?);
    let request = build_request(url, spec, user_agent)?;
    let read_body = spec.body.is_some();
    if url.tls {
        let config = tls.get(Alpn::Http1, spec.insecure_skip_verify).map_err(Outcome::unknown)?;
        let name = server_name(&url.host).map_err(Outcome::unknown)?;
        let stream = match TlsConnector::from(config).connect(name, stream).await {
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
                "{:?}, {:?}",
                session.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
                session
                    .negotiated_cipher_suite()
                    .map(|c| c.suite())
                    .unwrap_or(rustls::CipherSuite::Unknown(0)),
            )
        });
        send(TokioIo::new(stream), request, read_body, trace).await
    } else {
        send(TokioIo::new(stream), request, read_body, trace).await
    }
}

fn build_request(url: &Url, spec: &HttpSpec, user_agent: &str) -> Result<Request<Empty<Bytes>>, Outcome> {
    let mut request = Request::get(url.path.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| Outcome::unknown(format!("invalid request path {:?}: {e}", url.path)))?;
    let headers = request.headers_mut();
    let host = HeaderValue::from_str(&url.authority())
        .map_err(|e| Outcome::unknown(format!("invalid host {:?}: {e}", url.host)))?;
    headers.insert(HOST, host);
    if let Ok(ua) = HeaderValue::from_str(user_agent) {
        headers.insert(USER_AGENT, ua);
    }
    headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
    for (name, value) in &spec.headers {
        headers.insert(name.clone(), value.clone());
    }
    // Never keep the connection: probes must not reuse a possibly stale socket.
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok(request)
}

async fn send<IO>(
    io: IO,
    request: Request<Empty<Bytes>>,
    read_body: bool,
    trace: &mut Trace,
) -> Result<Response, Outcome>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| Outcome::unhealthy(Reason::Protocol, format!("HTTP handshake: {e}")))?;
    let (result, conn_error) = {
        let mut conn = std::pin::pin!(conn);
        let mut exchange = std::pin::pin!(async {
            let response = sender.send_request(request).await?;
            trace.step("first-byte", || format!("{:?} {}", response.version(), response.status()));
            let (parts, mut body) = response.into_parts();
            let mut bytes = Vec::new();
            if read_body {
                while bytes.len() < BODY_LIMIT {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                let room = BODY_LIMIT - bytes.len();
                                bytes.extend_from_slice(&data[..data.len().min(room)]);
                            }
                        }
                        Some(Err(e)) => return Err(e),
                        None => break,
                    }
                }
            }
            Ok::<_, hyper::Error>((parts, bytes))
        });
        // The connection is driven here, not spawned: when the probe ends, the socket goes with it.
        let mut conn_error = None;
        let result = tokio::select! {
            biased;
            result = &mut exchange => result,
            finished = &mut conn => {
                conn_error = finished.err();
                exchange.await
            }
        };
        (result, conn_error)
    };
    match result {
        Ok((parts, body)) => Ok(Response {
            status: parts.status,
            location: parts.headers.get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned),
            body,
        }),
        Err(e) => {
            let e = conn_error.unwrap_or(e);
            trace.step("first-byte", || format!("failed: {e}"));
            Err(hyper_outcome(&e))
        }
    }
}

fn hyper_outcome(e: &hyper::Error) -> Outcome {
    if let Some(io) = find_io_error(e) {
        return Outcome::unhealthy(net::io_reason(io), format!("HTTP exchange: {io}"));
    }
    if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        return Outcome::unhealthy(Reason::Reset, format!("connection closed before a full response: {e}"));
    }
    if e.is_timeout() {
        return Outcome::unhealthy(Reason::Timeout, format!("HTTP exchange: {e}"));
    }
    Outcome::unhealthy(Reason::Protocol, format!("not a valid HTTP response: {e}"))
}

fn find_io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
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
