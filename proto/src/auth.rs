//! Bearer tokens on the wire: how a client finds its token and puts it on every call, and how a server reads it back.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Where a worker or the command line finds its token when no `--token-file` is given. Never
/// a command-line argument: `ps` shows those to every user of the machine.
pub const TOKEN_ENV: &str = "OUTERLOOP_TOKEN";

/// The header every authenticated call carries: `authorization: Bearer TOKEN`.
const HEADER: &str = "authorization";
const SCHEME: &str = "Bearer ";

/// Shortest and longest token accepted: a short one can be guessed, a long one is a mistake.
const MIN_LEN: usize = 16;
const MAX_LEN: usize = 4096;

/// Why `token` cannot be a token, if it cannot: 16 to 4096 visible ASCII characters.
pub fn check_token(token: &str) -> Result<(), String> {
    if !(MIN_LEN..=MAX_LEN).contains(&token.len()) {
        return Err(format!(
            "a token has {MIN_LEN} to {MAX_LEN} characters, this one {}",
            token.len()
        ));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a token is visible ASCII characters, without spaces".into());
    }
    Ok(())
}

/// A client's token: the contents of `file` (surrounding white space trimmed) when given, else
/// `$OUTERLOOP_TOKEN`, else none.
pub fn client_token(file: Option<&Path>) -> Result<Option<String>, String> {
    let (token, from) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
            (text.trim().to_string(), path.display().to_string())
        }
        None => match std::env::var(TOKEN_ENV) {
            Ok(token) => (token.trim().to_string(), format!("${TOKEN_ENV}")),
            Err(_) => return Ok(None),
        },
    };
    check_token(&token).map_err(|e| format!("{from}: {e}"))?;
    Ok(Some(token))
}

/// Puts `authorization: Bearer TOKEN` on every call; nothing without a token.
#[derive(Clone, Debug, Default)]
pub struct ClientAuth(Option<MetadataValue<Ascii>>);

impl ClientAuth {
    pub fn new(token: Option<&str>) -> Result<ClientAuth, String> {
        let Some(token) = token else {
            return Ok(ClientAuth(None));
        };
        check_token(token)?;
        let value = format!("{SCHEME}{token}")
            .parse()
            .map_err(|_| "a token is visible ASCII characters, without spaces".to_string())?;
        Ok(ClientAuth(Some(value)))
    }
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(HEADER, value.clone());
        }
        Ok(request)
    }
}

/// The token a call carries, if it carries one the way [`ClientAuth`] puts it.
pub fn bearer<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get(HEADER)?
        .to_str()
        .ok()?
        .strip_prefix(SCHEME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_on_every_call_and_is_read_back() {
        let token = "0123456789abcdef-xyz";
        let mut auth = ClientAuth::new(Some(token)).unwrap();
        let request = auth.call(Request::new(())).unwrap();
        assert_eq!(bearer(&request), Some(token));
        let mut none = ClientAuth::new(None).unwrap();
        assert_eq!(bearer(&none.call(Request::new(())).unwrap()), None);
        for bad in ["short", "has a space in it ok", &"x".repeat(5000)] {
            assert!(ClientAuth::new(Some(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_token_file_is_read_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  0123456789abcdef\n").unwrap();
        assert_eq!(
            client_token(Some(&file)),
            Ok(Some("0123456789abcdef".to_string()))
        );
        std::fs::write(&file, "\n").unwrap();
        let error = client_token(Some(&file)).unwrap_err();
        assert!(
            error.contains("token") && error.contains("16 to 4096"),
            "{error}"
        );
        let error = client_token(Some(&dir.path().join("absent"))).unwrap_err();
        assert!(error.starts_with("cannot read the token file"), "{error}");
    }
}
