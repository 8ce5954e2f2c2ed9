//! The runner of the test binaries that cannot use libtest (they enter namespaces before any
//! thread starts, and run their cases one after another on shared, CPU-heavy state).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

use futures_util::FutureExt;

/// One case: an async function over the binary's shared state.
pub type Case<W> = for<'a> fn(&'a mut W) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// A missing prerequisite: a failure under `MC_REQUIRE_GUESTS=1` (scripts/test.sh installs
/// everything), else a skip that says why.
pub fn missing(binary: &str, reason: &str) -> ExitCode {
    if std::env::var("MC_REQUIRE_GUESTS").as_deref() == Ok("1") {
        eprintln!("{binary}: cannot run: {reason}");
        println!("0 passed, 1 failed");
        return ExitCode::FAILURE;
    }
    eprintln!("{binary}: SKIPPED, {reason}");
    println!("0 passed, 0 failed, 1 skipped");
    ExitCode::SUCCESS
}

/// The runtime the cases share: two workers, as the hosts have two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs every case in order, reporting each; `on_failure` may add context (a log tail) and
/// answers whether the later cases can still run.
pub fn run<W>(
    runtime: &tokio::runtime::Runtime,
    world: &mut W,
    cases: Vec<(&str, Case<W>)>,
    on_failure: impl Fn(&W) -> bool,
) -> ExitCode {
    let (mut passed, mut failed) = (0, 0);
    let mut broken = false;
    // Like libtest: a non-flag argument runs only the cases whose names contain it.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for (name, case) in cases {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        if broken {
            println!("test {name} ... not run (an earlier case left nothing to run on)");
            failed += 1;
            continue;
        }
        let started = Instant::now();
        match runtime.block_on(AssertUnwindSafe(case(world)).catch_unwind()) {
            Ok(()) => {
                println!(
                    "test {name} ... ok ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
                broken = !on_failure(world);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
