//! One local registry per test process, holding every test image, shared by
//! the tests of that process. The registry is started from a thread that
//! never ends and dies with the process (PR_SET_PDEATHSIG), so it is never
//! left behind.

use std::sync::OnceLock;
use std::sync::mpsc;

use crate::registry::Registry;
use crate::test_images::{self, PushedImage};

/// Registry hosts whose images the tests pull through the local registry.
pub const MIRRORED: &[&str] = &[
    "registry.k8s.io",
    "k8s.gcr.io",
    "gcr.io",
    "public.ecr.aws",
    "docker.io",
];

pub struct Fixture {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub images: Vec<PushedImage>,
}

impl Fixture {
    /// Mirror config: every mirrored host to the local registry.
    pub fn mirrors(&self) -> Vec<(&str, &str)> {
        MIRRORED.iter().map(|h| (*h, self.url.as_str())).collect()
    }

    /// A pushed image by its full name.
    pub fn image(&self, name: &str) -> &PushedImage {
        self.images
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no test image {name}"))
    }
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

pub fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let started = Registry::start().and_then(|r| {
                let pushed = test_images::push_all(&r.url())?;
                Ok((r, pushed))
            });
            match started {
                Ok((registry, images)) => {
                    let _ = tx.send(Ok(Fixture {
                        url: registry.url(),
                        host: registry.host(),
                        images,
                    }));
                    // Keep the registry (and this thread, its parent for
                    // PR_SET_PDEATHSIG) alive until the process exits.
                    let _keep = registry;
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
        match rx.recv() {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => panic!("test registry: {e}"),
            Err(_) => panic!("test registry thread died"),
        }
    })
}
