//! Value types of the configuration: server addresses and secrets.

use std::fmt;

/// A `host:port` server address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl ServerAddr {
    /// Parses `host:port`, `host` (with `default_port`), `[v6]:port` or `[v6]`.
    pub fn parse(s: &str, default_port: u16) -> std::result::Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not host:port (port 1-65535)");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(bad()),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => return Err(format!("{s:?}: write IPv6 addresses as [addr]:port")),
                None => (s, None),
            }
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(bad());
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(bad()),
            },
        };
        Ok(ServerAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A secret string (a password, a URL with credentials). `Debug` and `Display` print
/// `<redacted>`; [`Secret::expose`] gives the text to the code that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn server_addresses() {
        assert_eq!(
            ServerAddr::parse("[::1]:11212", 1).unwrap().to_string(),
            "[::1]:11212"
        );
        assert_eq!(ServerAddr::parse("h", 11211).unwrap().port, 11211);
        assert!(ServerAddr::parse("h:0", 1).is_err());
        assert!(ServerAddr::parse("::1", 1).is_err());
    }
}
