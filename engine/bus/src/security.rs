//! How the NATS client proves who it is and secures its connection: one of nats-server's
//! client authentication methods ([`NatsAuth`]) and TLS ([`NatsTls`]), applied to
//! `async_nats::ConnectOptions` with async-nats' own methods in [`NatsSecurity::apply`].
//!
//! Secrets are held here already read (the binary reads them from its config, environment or
//! secret files); `Debug` never prints them.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::BusError;

/// One nats-server authentication method; nats-server accepts one per connection.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials (a server without `authorization` or `accounts`).
    #[default]
    None,
    /// `user` / `password`, as in a `users` list of the server config.
    UserPassword {
        /// The user name.
        user: String,
        /// Its password (plain; the server may store it bcrypted).
        password: String,
    },
    /// The server's `authorization { token }`.
    Token(String),
    /// An NKey user: the seed (`SU...`) signs the server's nonce; only its public key (`U...`)
    /// is in the server config.
    NKey {
        /// The user seed.
        seed: String,
    },
    /// A `.creds` file (user JWT and seed) for a server in operator (decentralized JWT) mode.
    CredsFile(PathBuf),
}

/// TLS towards nats-server. With nothing set, TLS is used only if the server requires it, and
/// the system's roots verify the server.
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    /// PEM file of the CA(s) that sign the server's certificate (instead of the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for a server that verifies clients (`verify: true`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse to talk to the server without TLS.
    pub required: bool,
}

/// The security settings of a NATS connection: see the module docs.
#[derive(Debug, Clone, Default)]
pub struct NatsSecurity {
    /// How the client authenticates.
    pub auth: NatsAuth,
    /// TLS settings.
    pub tls: NatsTls,
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"<redacted>")
                .finish(),
            NatsAuth::Token(_) => f.write_str("Token(<redacted>)"),
            NatsAuth::NKey { seed } => f
                .debug_struct("NKey")
                .field("public_key", &nkey_public(seed).unwrap_or_default())
                .finish(),
            NatsAuth::CredsFile(path) => f.debug_tuple("CredsFile").field(path).finish(),
        }
    }
}

/// The public key (`U...`) of a user seed, or `None` if `seed` is not one.
fn nkey_public(seed: &str) -> Option<String> {
    nkeys::KeyPair::from_seed(seed)
        .ok()
        .filter(|k| k.key_pair_type() == nkeys::KeyPairType::User)
        .map(|k| k.public_key())
}

impl NatsTls {
    /// Whether the client insists on TLS: `required`, or a CA or client certificate is set
    /// (never fall back to plain text because the server happens not to ask for TLS).
    pub fn wanted(&self) -> bool {
        self.required || self.ca_file.is_some() || self.client_cert.is_some()
    }
}

impl NatsAuth {
    /// The method's name for logs and errors (`user/password`, `token`, `nkey`, `creds file`).
    pub fn method(&self) -> &'static str {
        match self {
            NatsAuth::None => "none",
            NatsAuth::UserPassword { .. } => "user/password",
            NatsAuth::Token(_) => "token",
            NatsAuth::NKey { .. } => "nkey",
            NatsAuth::CredsFile(_) => "creds file",
        }
    }
}

impl NatsSecurity {
    /// Applies the settings to `opts`. Fails, before any connection is tried, if a file cannot
    /// be read or the nkey seed or creds file is not valid (async-nats itself would only say
    /// "failed signing nonce" once connected).
    pub async fn apply(
        &self,
        mut opts: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, BusError> {
        opts = match &self.auth {
            NatsAuth::None => opts,
            NatsAuth::UserPassword { user, password } => {
                opts.user_and_password(user.clone(), password.clone())
            }
            NatsAuth::Token(token) => opts.token(token.clone()),
            NatsAuth::NKey { seed } => {
                if nkey_public(seed).is_none() {
                    return Err(BusError::Credentials {
                        what: "nkey seed".into(),
                        reason: "not an NKey user seed (one line starting with `SU`, as \
                                 `nk -gen user` prints)"
                            .into(),
                        source: None,
                    });
                }
                opts.nkey(seed.clone())
            }
            NatsAuth::CredsFile(path) => {
                opts.credentials_file(path)
                    .await
                    .map_err(|e| BusError::Credentials {
                        what: format!("creds file {}", path.display()),
                        reason: "not a readable NATS credentials file (a user JWT and an NKey \
                                 seed, as `nsc generate creds` writes)"
                            .into(),
                        source: Some(Box::new(e)),
                    })?
            }
        };
        // async-nats reads the PEM files when it connects; read them now so a missing file is
        // named instead of reported as a TLS error.
        let tls = &self.tls;
        if let Some(ca) = &tls.ca_file {
            readable(ca, "TLS CA file")?;
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &tls.client_cert {
            readable(cert, "TLS client certificate")?;
            readable(key, "TLS client key")?;
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(opts.require_tls(tls.wanted()))
    }
}

fn readable(path: &Path, what: &str) -> Result<(), BusError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| BusError::Credentials {
            what: format!("{what} {}", path.display()),
            reason: "cannot be read".into(),
            source: Some(Box::new(e)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        for auth in [
            NatsAuth::UserPassword {
                user: "engine".into(),
                password: "hunter2".into(),
            },
            NatsAuth::Token("t0ken".into()),
            NatsAuth::NKey { seed: seed.clone() },
        ] {
            let shown = format!("{auth:?}");
            for secret in ["hunter2", "t0ken", seed.as_str()] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
    }

    #[tokio::test]
    async fn a_bad_seed_or_creds_file_is_refused_before_connecting() {
        let bad_seed = NatsSecurity {
            auth: NatsAuth::NKey {
                // An account seed, not a user's.
                seed: nkeys::KeyPair::new_account().seed().unwrap(),
            },
            ..Default::default()
        };
        let err = bad_seed
            .apply(async_nats::ConnectOptions::new())
            .await
            .expect_err("refused")
            .to_string();
        assert!(err.contains("nkey seed") && err.contains("SU"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("engine.creds");
        std::fs::write(&creds, "not a creds file\n").unwrap();
        let err = NatsSecurity {
            auth: NatsAuth::CredsFile(creds.clone()),
            ..Default::default()
        }
        .apply(async_nats::ConnectOptions::new())
        .await
        .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains(&creds.display().to_string()) && text.contains("credentials file"),
            "{text}"
        );
        assert_eq!(err.kind(), crate::BusErrorKind::Permanent);

        let err = NatsSecurity {
            tls: NatsTls {
                ca_file: Some(dir.path().join("missing-ca.pem")),
                ..Default::default()
            },
            ..Default::default()
        }
        .apply(async_nats::ConnectOptions::new())
        .await
        .expect_err("refused")
        .to_string();
        assert!(
            err.contains("TLS CA file") && err.contains("missing-ca.pem"),
            "{err}"
        );
    }
}
