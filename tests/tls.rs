//! TLS end to end with certificates the test makes: a coordinator that requires client certificates (mutual TLS), a worker and the command line that present theirs, and clients that cannot connect without the right files.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, SPEC};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// A certificate authority, the coordinator's certificate (for 127.0.0.1) and a client's, all
/// signed by it, and an authority nobody uses, written as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    stranger_ca: PathBuf,
}

fn authority(dir: &Path, name: &str) -> (PathBuf, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    (path, Issuer::new(params, key))
}

fn leaf(dir: &Path, name: &str, issuer: &Issuer<'static, KeyPair>) -> (PathBuf, PathBuf) {
    let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

fn pki(dir: &Path) -> Pki {
    let (ca, issuer) = authority(dir, "ca");
    let (stranger_ca, _) = authority(dir, "stranger-ca");
    Pki {
        server: leaf(dir, "server", &issuer),
        client: leaf(dir, "client", &issuer),
        ca,
        stranger_ca,
    }
}

fn arg(path: &Path) -> String {
    path.to_str().unwrap().to_string()
}

#[test]
fn a_run_over_mutual_tls_and_clients_without_the_right_files_are_turned_away() {
    let files = tempfile::tempdir().unwrap();
    let pki = pki(files.path());
    let mut cluster = Cluster::start(&[
        "--server-cert",
        &arg(&pki.server.0),
        "--server-key",
        &arg(&pki.server.1),
        "--client-ca",
        &arg(&pki.ca),
    ]);
    cluster.url = cluster.url.replace("http://", "https://");
    let client_files = [
        "--tls-ca".to_string(),
        arg(&pki.ca),
        "--tls-cert".into(),
        arg(&pki.client.0),
        "--tls-key".into(),
        arg(&pki.client.1),
    ];

    // Each missing or wrong piece fails the call, and says so.
    let refused = |extra: &[String], says: &str| {
        let out = cluster.cli(
            &[
                ["workers"].as_slice(),
                &extra.iter().map(String::as_str).collect::<Vec<_>>(),
            ]
            .concat(),
        );
        assert!(!out.status.success(), "{extra:?} got through");
        let error = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(error.contains(says), "{extra:?}: {error}");
    };
    refused(&[], "needs --tls-ca");
    refused(
        &["--tls-ca".into(), arg(&pki.stranger_ca)],
        "cannot reach the coordinator",
    );
    refused(
        &["--tls-ca".into(), arg(&pki.ca)],
        "without --tls-cert and --tls-key",
    );
    let plain = cluster.url.replace("https://", "http://");
    let out = std::process::Command::new(common::BIN)
        .args(["workers", "--coordinator", &plain])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "plain HTTP/2 got through to a TLS port"
    );

    // With its files a worker registers and a run finishes.
    cluster.cli_args = client_files.to_vec();
    let worker_args: Vec<&str> = client_files.iter().map(String::as_str).collect();
    cluster.add_worker_with(&worker_args);
    cluster.wait_workers(1);
    let id = cluster.submit(SPEC, &common::TINY).unwrap();
    cluster.wait_finished(&id, Duration::from_secs(300));
}
