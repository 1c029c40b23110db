//! `crius-test-images`: builds the test images (see `e2e::test_images`) and
//! pushes them to a registry.
//!
//! ```text
//! crius-test-images --registry http://127.0.0.1:PORT   push all, print "<name> <digest>"
//! crius-test-images --list                             print the names only
//! ```

use std::process::ExitCode;

const USAGE: &str = "usage: crius-test-images --registry http://[user:pass@]127.0.0.1:PORT\n       \
                     crius-test-images --list";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut registry = None;
    let mut list = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--registry" => match args.next() {
                Some(url) => registry = Some(url),
                None => {
                    eprintln!("--registry needs a URL\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            s if s.starts_with("--registry=") => {
                registry = Some(s["--registry=".len()..].to_owned());
            }
            "--list" => list = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if list {
        for name in e2e::test_images::all_image_names() {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let Some(registry) = registry else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match e2e::test_images::push_all(&registry) {
        Ok(images) => {
            for image in images {
                println!("{} {}", image.name, image.manifest_digest);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("crius-test-images: {e}");
            ExitCode::FAILURE
        }
    }
}
