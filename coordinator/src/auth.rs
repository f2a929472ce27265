//! Who may call what: bearer tokens of two roles, checked on every call; workers register, lease and complete, users submit, watch and cancel.

use std::path::Path;
use std::sync::Arc;

use outerloop_proto::auth::{bearer, check_token};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The environment variables a coordinator reads its tokens from when no `--tokens` file is
/// given: one token of each role.
pub const WORKER_TOKEN_ENV: &str = "OUTERLOOP_WORKER_TOKEN";
pub const USER_TOKEN_ENV: &str = "OUTERLOOP_USER_TOKEN";

/// What a token lets its holder call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The `Workers` service (register, heart-beat, lease) and the `Results` service (complete).
    Worker,
    /// The `Experiments` service: submit, status, cancel, list workers.
    User,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::User => "user",
        }
    }
}

/// The tokens a coordinator accepts; none means authentication is off.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<(Role, String)>,
}

impl Tokens {
    /// From `file` when given (see [`Tokens::parse`]), else from `$OUTERLOOP_WORKER_TOKEN` and
    /// `$OUTERLOOP_USER_TOKEN`; none when neither is set.
    pub fn load(file: Option<&Path>) -> Result<Tokens, String> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
            return Tokens::parse(&text, &path.display().to_string());
        }
        let mut text = String::new();
        for (role, var) in [
            (Role::Worker, WORKER_TOKEN_ENV),
            (Role::User, USER_TOKEN_ENV),
        ] {
            if let Ok(token) = std::env::var(var) {
                text.push_str(&format!("{} {}\n", role.name(), token.trim()));
            }
        }
        if text.is_empty() {
            return Ok(Tokens::default());
        }
        Tokens::parse(&text, &format!("${WORKER_TOKEN_ENV} and ${USER_TOKEN_ENV}"))
    }

    /// Lines `worker TOKEN` or `user TOKEN`, any number of each; blank lines and `#` comments
    /// are skipped. At least one token of each role, and no token in both.
    pub fn parse(text: &str, source: &str) -> Result<Tokens, String> {
        let mut tokens: Vec<(Role, String)> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |problem: String| format!("{source}:{}: {problem}", number + 1);
            let (role, token) = match line.split_once(char::is_whitespace) {
                Some(("worker", token)) => (Role::Worker, token.trim()),
                Some(("user", token)) => (Role::User, token.trim()),
                _ => {
                    return Err(at(
                        "expected `worker TOKEN` or `user TOKEN` (the line is not shown)".into(),
                    ))
                }
            };
            check_token(token).map_err(at)?;
            if tokens.iter().any(|(r, t)| t == token && *r != role) {
                return Err(at(
                    "the same token is given to workers and users; give each role its own".into(),
                ));
            }
            tokens.push((role, token.to_string()));
        }
        for role in [Role::Worker, Role::User] {
            if !tokens.iter().any(|(r, _)| *r == role) {
                return Err(format!(
                    "{source}: no {} token; give at least one token to each role",
                    role.name()
                ));
            }
        }
        Ok(Tokens { tokens })
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The role of `token`, comparing with every known token in time that does not depend on
    /// where they differ.
    fn role_of(&self, token: &str) -> Option<Role> {
        let mut found = None;
        for (role, known) in &self.tokens {
            if same(known.as_bytes(), token.as_bytes()) {
                found = Some(*role);
            }
        }
        found
    }
}

/// Whether `a` and `b` are equal, reading all of both whatever they hold.
fn same(a: &[u8], b: &[u8]) -> bool {
    let differ = a
        .iter()
        .zip(b)
        .fold(u8::from(a.len() != b.len()), |d, (x, y)| d | (x ^ y));
    differ == 0
}

/// Lets a call through when its token has `role` (or when no tokens are configured).
#[derive(Clone, Debug)]
pub struct Gate {
    tokens: Arc<Tokens>,
    role: Role,
}

impl Gate {
    pub fn new(tokens: Arc<Tokens>, role: Role) -> Gate {
        Gate { tokens, role }
    }
}

impl Interceptor for Gate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.tokens.is_empty() {
            return Ok(request);
        }
        let Some(token) = bearer(&request) else {
            return Err(Status::unauthenticated(format!(
                "this coordinator requires a {} token: put it in a file given as --token-file, or in ${}",
                self.role.name(),
                outerloop_proto::auth::TOKEN_ENV
            )));
        };
        match self.tokens.role_of(token) {
            None => Err(Status::unauthenticated(
                "the token is not one this coordinator accepts",
            )),
            Some(role) if role != self.role => Err(Status::permission_denied(format!(
                "a {} token cannot make this call; it needs a {} token",
                role.name(),
                self.role.name()
            ))),
            Some(_) => Ok(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outerloop_proto::auth::ClientAuth;

    const WORKER: &str = "worker-token-0123456789";
    const USER: &str = "user-token-0123456789";

    fn call(gate: &mut Gate, token: Option<&str>) -> Result<(), Status> {
        let request = ClientAuth::new(token)
            .unwrap()
            .call(Request::new(()))
            .unwrap();
        gate.call(request).map(drop)
    }

    #[test]
    fn each_role_passes_its_own_gate_only() {
        let text = format!("# tokens\nworker {WORKER}\n\nuser {USER}\n");
        let tokens = Arc::new(Tokens::parse(&text, "tokens").unwrap());
        let mut workers = Gate::new(tokens.clone(), Role::Worker);
        let mut users = Gate::new(tokens, Role::User);
        assert!(call(&mut workers, Some(WORKER)).is_ok());
        assert!(call(&mut users, Some(USER)).is_ok());
        let denied = call(&mut users, Some(WORKER)).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("a worker token cannot"),
            "{denied:?}"
        );
        assert_eq!(
            call(&mut workers, Some(USER)).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        for wrong in [
            None,
            Some("worker-token-0123456788"),
            Some("worker-token-01234567890"),
        ] {
            let refused = call(&mut workers, wrong).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{wrong:?}");
        }
        // Without tokens every call passes: the coordinator then listens on loopback only.
        let mut open = Gate::new(Arc::new(Tokens::default()), Role::User);
        assert!(call(&mut open, None).is_ok());
    }

    #[test]
    fn bad_token_files_name_the_line_and_never_show_a_token() {
        for (text, says) in [
            (
                format!("worker {WORKER}\nadmin {USER}\n"),
                "tokens:2: expected `worker TOKEN`",
            ),
            (
                format!("worker {WORKER}\nuser short\n"),
                "tokens:2: a token has 16",
            ),
            (format!("worker {WORKER}\n"), "no user token"),
            (
                format!("worker {WORKER}\nuser {WORKER}\n"),
                "tokens:2: the same token",
            ),
        ] {
            let error = Tokens::parse(&text, "tokens").unwrap_err();
            assert!(error.contains(says), "{error}");
            assert!(!error.contains(WORKER) && !error.contains(USER), "{error}");
        }
    }
}
