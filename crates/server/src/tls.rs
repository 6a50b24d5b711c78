//! HTTPS for the API and registry listener: the operator's certificate, or a private CA and
//! a server certificate generated on first start and kept in the data dir.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the listener's certificate comes from.
#[derive(Clone, Debug)]
pub enum TlsSource {
    /// PEM files given by the operator: the certificate chain (leaf first) and its key.
    Files { certificate: PathBuf, key: PathBuf },
    /// `DIR/ca.pem` (the CA clients trust), `DIR/cert.pem` and `DIR/key.pem`, generated
    /// when missing, for `names` (DNS names, IP addresses, `host:port`; a wildcard address
    /// stands for every interface's) besides localhost and the loopback addresses.
    Generated {
        directory: PathBuf,
        names: Vec<String>,
    },
}

/// Why HTTPS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM {what} in it")]
    Pem { path: String, what: &'static str },
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate and key do not go together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The file names of a generated certificate set.
pub const CA_FILE: &str = "ca.pem";
pub const CERTIFICATE_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
const CA_KEY_FILE: &str = "ca-key.pem";

/// Builds the rustls configuration, generating certificates first where needed.
pub fn server_config(source: &TlsSource) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certificate, key) = match source {
        TlsSource::Files { certificate, key } => (certificate.clone(), key.clone()),
        TlsSource::Generated { directory, names } => {
            ensure_generated(directory, names)?;
            (directory.join(CERTIFICATE_FILE), directory.join(KEY_FILE))
        }
    };
    let chain = read_chain(&certificate)?;
    let key = read_key(&key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // The router speaks HTTP/1.1 only; say so, so clients never try h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(io_error(path))?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(io_error(path))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Pem {
        path: path.display().to_string(),
        what: "private key",
    })
}

/// The names a generated server certificate covers.
fn subject_names(names: &[String]) -> Vec<String> {
    let mut all = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            all.push(host.to_owned());
        }
    }
    for name in names {
        // A wildcard listen address: every address of this host's interfaces.
        if name == "0.0.0.0" || name == "::" {
            if let Ok(interfaces) = if_addrs::get_if_addrs() {
                all.extend(interfaces.into_iter().map(|i| i.ip().to_string()));
            }
            continue;
        }
        // `host:port` (a registry host) -> host; bare IPv6 addresses keep their colons.
        let host = match name.parse::<IpAddr>() {
            Ok(_) => name.as_str(),
            Err(_) => name
                .trim_start_matches('[')
                .rsplit_once(':')
                .map_or(name.as_str(), |(host, _)| host.trim_end_matches(']')),
        };
        if host.is_empty() || host == "0.0.0.0" || host == "::" {
            continue;
        }
        all.push(host.to_owned());
    }
    all.sort();
    all.dedup();
    all
}

/// Writes a CA and a server certificate signed by it, unless all three files are there.
/// A CA rather than one self-signed certificate, because clients (Docker's certs.d, the AWS
/// CLI's AWS_CA_BUNDLE, OpenSSL) all accept a CA as a trust anchor without special flags.
fn ensure_generated(directory: &Path, names: &[String]) -> Result<(), TlsError> {
    let wanted = [CA_FILE, CERTIFICATE_FILE, KEY_FILE];
    if wanted.iter().all(|file| directory.join(file).exists()) {
        return Ok(());
    }
    std::fs::create_dir_all(directory).map_err(io_error(directory))?;
    let now = time::OffsetDateTime::now_utc();

    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Flotilla local CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - time::Duration::days(1);
    ca_params.not_after = now + time::Duration::days(3650);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_certificate = ca_params.self_signed(&ca_key)?;

    let mut params = rcgen::CertificateParams::new(subject_names(names))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Flotilla");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(825);
    let key = rcgen::KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let certificate = params.signed_by(&key, &issuer)?;

    write_private(&directory.join(CA_KEY_FILE), &ca_key_pem)?;
    write_private(&directory.join(KEY_FILE), &key.serialize_pem())?;
    // Leaf then CA: clients that were given the CA still get a complete chain.
    let chain = format!("{}{}", certificate.pem(), ca_certificate.pem());
    write_atomically(&directory.join(CERTIFICATE_FILE), chain.as_bytes(), 0o644)?;
    // Last: its presence means the set is complete.
    write_atomically(
        &directory.join(CA_FILE),
        ca_certificate.pem().as_bytes(),
        0o644,
    )?;
    Ok(())
}

fn write_private(path: &Path, pem: &str) -> Result<(), TlsError> {
    write_atomically(path, pem.as_bytes(), 0o600)
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io_error(&temporary))?;
    file.write_all(bytes).map_err(io_error(&temporary))?;
    file.sync_all().map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_set_is_kept_and_covers_the_names_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let source = TlsSource::Generated {
            directory: dir.path().to_owned(),
            names: vec!["registry.example:4750".to_owned(), "192.0.2.9".to_owned()],
        };
        server_config(&source).unwrap();
        let first = std::fs::read(dir.path().join(CERTIFICATE_FILE)).unwrap();
        server_config(&source).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(CERTIFICATE_FILE)).unwrap(),
            first,
            "a restart must keep the certificate clients were told to trust"
        );
        let names = subject_names(&["registry.example:4750".to_owned(), "::1".to_owned()]);
        assert!(names.contains(&"registry.example".to_owned()), "{names:?}");
        assert!(names.contains(&"::1".to_owned()), "{names:?}");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the private key is readable by others");
    }

    #[test]
    fn missing_or_mismatched_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let error = server_config(&TlsSource::Files {
            certificate: dir.path().join("nope.pem"),
            key: dir.path().join("nope-key.pem"),
        })
        .unwrap_err();
        assert!(error.to_string().contains("nope.pem"), "{error}");

        std::fs::write(dir.path().join("empty.pem"), "not pem").unwrap();
        let error = server_config(&TlsSource::Files {
            certificate: dir.path().join("empty.pem"),
            key: dir.path().join("empty.pem"),
        })
        .unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
