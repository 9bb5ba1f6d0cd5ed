//! `sendense-hub image serve`: one image over our NBD server, like
//! `qemu-nbd`, without QEMU. A QCOW2 image is served through our engine
//! (writes into the top layer, reads and block status through the chain);
//! anything else is served as a raw file.
//!
//! SIGINT/SIGTERM stop accepting, let connections finish their in-flight
//! requests, then flush the image and close it cleanly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sendense_nbd::{Export, ExportRegistry, FileExport, Server, ServerOptions, tls};
use sendense_qcow2::{BackingPolicy, Image, OpenOptions};

use crate::export::Qcow2Export;
use crate::{ImageError, is_qcow2};

/// Options of [`serve_image`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The image to serve.
    pub file: PathBuf,
    /// Refuse writes (the image is opened read-only).
    pub read_only: bool,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Export name (empty: the default export).
    pub export: String,
    /// QEMU-style x509 folder; TLS is required when given.
    pub tls_dir: Option<PathBuf>,
    /// Require client certificates signed by the folder's `ca-cert.pem`.
    pub verify_clients: bool,
    /// Which backing files the image's chain may name.
    pub backing: BackingPolicy,
}

/// An export opened on a file, and the QCOW2 image behind it (if any), to flush at the end.
#[derive(Debug)]
pub struct OpenedExport {
    /// What the NBD server serves.
    pub export: Arc<dyn Export>,
    /// The QCOW2 image, when the file is one.
    pub image: Option<Arc<Image>>,
}

/// The export for `path`: our QCOW2 engine for QCOW2 files (backing files
/// opened only as `backing` allows), a raw file otherwise.
///
/// # Errors
/// The file cannot be opened (or is locked by another writer), or the
/// policy refuses a backing file.
pub fn open_export(
    path: &Path,
    read_only: bool,
    backing: BackingPolicy,
) -> Result<OpenedExport, ImageError> {
    if is_qcow2(path)? {
        let opts = if read_only {
            OpenOptions::read_only()
        } else {
            OpenOptions::writable()
        }
        .backing(backing);
        let image = Image::open(path, &opts).map_err(|e| ImageError::qcow2(path, e))?;
        let image = Arc::new(image);
        let export: Arc<dyn Export> = Arc::new(Qcow2Export::new(Arc::clone(&image), read_only));
        Ok(OpenedExport {
            export,
            image: Some(image),
        })
    } else {
        let export = FileExport::open(path, read_only).map_err(|e| ImageError::io(path, e))?;
        Ok(OpenedExport {
            export: Arc::new(export),
            image: None,
        })
    }
}

/// Serves `opts.file` until `shutdown` resolves; flushes before returning.
///
/// # Errors
/// The image, the TLS folder or the address cannot be used, or the final flush fails.
pub async fn serve_image(
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ImageError> {
    let OpenedExport { export, image } = open_export(&opts.file, opts.read_only, opts.backing)?;
    let tls = match &opts.tls_dir {
        Some(dir) => Some(
            tls::server_config_from_dir(dir, opts.verify_clients).map_err(|source| {
                ImageError::Tls {
                    dir: dir.clone(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ImageError::Bind {
            addr: opts.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ImageError::Bind {
        addr: opts.listen,
        source,
    })?;
    let registry = Arc::new(ExportRegistry::new());
    registry.add(opts.export.clone(), export)?;
    let scheme = if tls.is_some() { "nbds" } else { "nbd" };
    tracing::info!(
        file = %opts.file.display(),
        uri = %format!("{scheme}://{local}/{}", opts.export),
        read_only = opts.read_only,
        "serving image"
    );
    let server = Server::new(
        registry,
        ServerOptions {
            tls,
            // One export, named on the command line: listing it gives nothing away.
            list_exports: true,
            ..ServerOptions::default()
        },
    );
    server.serve(listener, shutdown).await?;
    if let Some(image) = image {
        let path = opts.file.clone();
        tokio::task::spawn_blocking(move || image.flush())
            .await
            .map_err(|_| ImageError::WorkerPanicked)?
            .map_err(|source| ImageError::Flush { path, source })?;
    }
    tracing::info!(file = %opts.file.display(), "image closed cleanly");
    Ok(())
}
