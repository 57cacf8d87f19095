//! Where the endpoint listens and the secret it requires, parsed and checked
//! once at start-up.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Error;

/// The path App Service serves tokens at; SDKs take whatever
/// `IDENTITY_ENDPOINT` says, so it is only a convention.
pub const DEFAULT_PATH: &str = "/msi/token";

/// Where `aws2azure serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8791);

/// Shortest secret accepted from the environment (about 95 bits as
/// random printable characters; a generated one has 256).
const MIN_HEADER_LEN: usize = 16;
const MAX_HEADER_LEN: usize = 256;

/// The value `X-IDENTITY-HEADER` must carry: it keeps any process that can
/// merely make this host send a request (SSRF) from getting tokens.
#[derive(Clone)]
pub struct IdentityHeader(String);

impl IdentityHeader {
    /// 256 bits from the operating system's generator, hex-encoded.
    pub fn random() -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| {
            Error::setting(
                "IDENTITY_HEADER",
                format!("no random secret could be generated ({e})"),
                "set IDENTITY_HEADER to a random value of at least 16 characters",
            )
        })?;
        Ok(Self(hex::encode(bytes)))
    }

    /// A secret given through `setting` (`IDENTITY_HEADER`).
    pub fn parse(setting: &'static str, value: &str) -> Result<Self, Error> {
        let len = value.len();
        if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&len) {
            return Err(Error::setting(
                setting,
                format!("is {len} characters long"),
                format!(
                    "use {MIN_HEADER_LEN} to {MAX_HEADER_LEN} random characters, e.g. `openssl rand -hex 32`"
                ),
            ));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::setting(
                setting,
                "holds characters a header value cannot carry",
                "use letters, digits and punctuation only, e.g. `openssl rand -hex 32`",
            ));
        }
        Ok(Self(value.to_string()))
    }

    /// The secret itself, for the `export IDENTITY_HEADER=` line.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in constant time; hashing first also hides the length.
    pub fn matches(&self, given: &[u8]) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(given);
        expected.ct_eq(&given).into()
    }
}

impl fmt::Debug for IdentityHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityHeader(<redacted>)")
    }
}

#[derive(Clone, Debug)]
pub struct EndpointSettings {
    pub listen: SocketAddr,
    /// The path tokens are served at (`/msi/token`).
    pub path: String,
    pub header: IdentityHeader,
    /// Listen on an address other hosts can reach. Off unless asked for:
    /// the header is then all that stands between the network and tokens.
    pub allow_remote: bool,
}

impl EndpointSettings {
    pub fn loopback(listen: SocketAddr, header: IdentityHeader) -> Self {
        Self {
            listen,
            path: DEFAULT_PATH.into(),
            header,
            allow_remote: false,
        }
    }

    /// From the values of `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`, as a
    /// Lambda function's environment carries them for its extension: the
    /// endpoint must be plain http on a loopback address with a port.
    pub fn from_identity_env(endpoint: &str, header: &str) -> Result<Self, Error> {
        const SETTING: &str = "IDENTITY_ENDPOINT";
        let fix = "use http://127.0.0.1:PORT/msi/token (loopback, with a port)";
        let url = url::Url::parse(endpoint).map_err(|e| {
            Error::setting(
                SETTING,
                format!(
                    "`{}` is not a URL ({e})",
                    aws2azure_shared::echo(endpoint, 100)
                ),
                fix,
            )
        })?;
        if url.scheme() != "http" || url.query().is_some() || url.fragment().is_some() {
            return Err(Error::setting(
                SETTING,
                format!(
                    "`{}` is not a plain http URL",
                    aws2azure_shared::echo(endpoint, 100)
                ),
                fix,
            ));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain("localhost")) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => {
                return Err(Error::setting(
                    SETTING,
                    format!(
                        "`{}` does not name a loopback address",
                        aws2azure_shared::echo(endpoint, 100)
                    ),
                    fix,
                ));
            }
        };
        if !ip.is_loopback() {
            return Err(Error::setting(
                SETTING,
                format!("{ip} is not a loopback address"),
                fix,
            ));
        }
        let port = url
            .port()
            .ok_or_else(|| Error::setting(SETTING, "names no port", fix))?;
        let path = match url.path() {
            "" => "/".to_string(),
            path => path.to_string(),
        };
        Ok(Self {
            listen: SocketAddr::new(ip, port),
            path,
            header: IdentityHeader::parse("IDENTITY_HEADER", header)?,
            allow_remote: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    #[test]
    fn identity_env_must_be_loopback_http_with_a_port() {
        let s =
            EndpointSettings::from_identity_env("http://127.0.0.1:8791/msi/token", SECRET).unwrap();
        assert_eq!(s.listen, "127.0.0.1:8791".parse().unwrap());
        assert_eq!(s.path, "/msi/token");
        let s = EndpointSettings::from_identity_env("http://localhost:9/", SECRET).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9".parse().unwrap());
        let s = EndpointSettings::from_identity_env("http://[::1]:9/x", SECRET).unwrap();
        assert!(s.listen.ip().is_loopback());

        for (endpoint, expected) in [
            ("https://127.0.0.1:9/", "plain http"),
            ("http://10.0.0.1:9/", "not a loopback"),
            ("http://169.254.169.254:80/", "not a loopback"),
            ("http://example.com:9/", "loopback"),
            ("http://127.0.0.1/", "no port"),
            ("http://127.0.0.1:9/?a=b", "plain http"),
            ("127.0.0.1:9", "URL"),
        ] {
            let err = EndpointSettings::from_identity_env(endpoint, SECRET).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("IDENTITY_ENDPOINT"), "{message}");
            assert!(message.contains(expected), "{endpoint}: {message}");
        }
    }

    #[test]
    fn the_header_secret_is_checked_and_never_shown() {
        for bad in ["short", "has a space in it here", &"x".repeat(300)] {
            let err = IdentityHeader::parse("IDENTITY_HEADER", bad).unwrap_err();
            assert!(err.to_string().starts_with("IDENTITY_HEADER"), "{err}");
            assert!(!err.to_string().contains(bad), "{err}");
        }
        let header = IdentityHeader::parse("IDENTITY_HEADER", SECRET).unwrap();
        assert!(!format!("{header:?}").contains(SECRET));
        assert!(header.matches(SECRET.as_bytes()));
        assert!(!header.matches(b"0123456789abcdef012"));
        assert!(!header.matches(b""));

        let a = IdentityHeader::random().unwrap();
        let b = IdentityHeader::random().unwrap();
        assert_eq!(a.expose().len(), 64, "256 bits, hex");
        assert_ne!(a.expose(), b.expose());
    }
}
