//! Release builds of the `firebreak` binary on x86_64 Linux link its functions in the order of
//! `layout/firebreak.order` (written by `scripts/order-file`): what start-up and the per-alert
//! path run lies together at the start of the code instead of spread over the whole binary.
//! Measured in docs/BENCHMARKS.md ("Code layout"). The toolchain's default linker there is lld
//! (Rust 1.90, this crate's minimum); a build that picks another linker or linker flavour through
//! RUSTFLAGS, or sets FIREBREAK_NO_ORDER_FILE, links in the compiler's order.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=layout/firebreak.order");
    println!("cargo:rerun-if-env-changed=FIREBREAK_NO_ORDER_FILE");
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("layout")
        .join("firebreak.order");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let wanted = var("PROFILE") == "release"
        && var("TARGET") == "x86_64-unknown-linux-gnu"
        && env::var_os("FIREBREAK_NO_ORDER_FILE").is_none()
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("linker")
        && order.is_file();
    if wanted {
        println!(
            "cargo:rustc-link-arg-bin=firebreak=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names of functions that no longer exist (the code moved on since the file was
        // written) are skipped; lld would name each one.
        println!("cargo:rustc-link-arg-bin=firebreak=-Wl,--no-warn-symbol-ordering");
    }
}
