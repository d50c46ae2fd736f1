//! What a stage reaches of the host, and what it is charged for it: the
//! `tenet:policy/host.log` import (defined here by hand, not by the
//! bindings, so the message is measured where it lies before anything is
//! copied), the per-store state that meters a stage call, its memory cap,
//! and the ticker behind the wall-clock deadlines.
//!
//! `host.log` costs the calling stage [`log_limits::CALL_FUEL`] plus
//! [`log_limits::BYTE_FUEL`] per byte of the message, taken from the same
//! fuel as its instructions, so the host work a stage can cause through it
//! is bounded by its fuel budget; running out is "budget exceeded" (102).
//! Of each call at most [`log_limits::LINE_BYTES`] are copied, and of a
//! whole stage call at most [`log_limits::LINES`] lines and
//! [`log_limits::STAGE_BYTES`]; the rest is charged and dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use wasmtime::component::{Linker, WasmStr};
use wasmtime::{Engine, ResourceLimiter, StoreContextMut, Trap};

use super::bindings::Level;

/// Limits of `host.log`.
pub mod log_limits {
    /// Lines kept per stage call; later lines are charged and dropped.
    pub const LINES: u32 = 64;
    /// Bytes kept of one line.
    pub const LINE_BYTES: usize = 1024;
    /// Bytes kept of all the lines of one stage call.
    pub const STAGE_BYTES: usize = 16 * 1024;
    /// Fuel one call costs whatever its length: crossing into the host,
    /// checking and logging costs the host far more than one instruction
    /// (a loop of empty calls stops after `fuel / CALL_FUEL` of them).
    pub const CALL_FUEL: u64 = 10_000;
    /// Fuel per byte of the message: the host validates the whole message
    /// where it lies (UTF-8), the part it drops included.
    pub const BYTE_FUEL: u64 = 1;
}

/// The wall-clock tick: deadlines are kept to within one tick.
pub const TICK: Duration = Duration::from_millis(5);

/// Epoch ticks for a deadline of `ms` milliseconds: at least `ms` (the
/// current tick may be almost over, hence the extra one), at most one tick
/// more.
pub fn ticks(ms: u64) -> u64 {
    ms.div_ceil(TICK.as_millis() as u64) + 1
}

/// Per-store host state: limits and accounting for the stage being called.
pub(crate) struct HostState {
    /// The stage being called (its name is in log lines and errors).
    pub stage: String,
    pub memory_cap: usize,
    pub memory_exceeded: bool,
    pub log_lines: u32,
    pub log_bytes: usize,
    /// The limit was reached (said once per call).
    pub log_dropped: bool,
    /// The deadline of the current call, in milliseconds (for the error).
    pub deadline_ms: u64,
    /// Stages whose instances live in this store (a bundle holds them all):
    /// the per-store counts below are per stage.
    pub stages: usize,
}

impl HostState {
    pub(crate) fn new(stage: &str, memory_cap: usize, stages: usize) -> Self {
        HostState {
            stage: stage.to_owned(),
            memory_cap,
            memory_exceeded: false,
            log_lines: 0,
            log_bytes: 0,
            log_dropped: false,
            deadline_ms: 0,
            stages,
        }
    }

    /// Resets the accounting for a call of `stage`.
    pub(crate) fn enter(&mut self, stage: &str, memory_cap: usize, deadline_ms: u64) {
        self.stage.clear();
        self.stage.push_str(stage);
        self.memory_cap = memory_cap;
        self.memory_exceeded = false;
        self.log_lines = 0;
        self.log_bytes = 0;
        self.log_dropped = false;
        self.deadline_ms = deadline_ms;
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            // Trap rather than fail the grow: a guest allocator that ignores
            // failure must not keep running in an undefined state.
            self.memory_exceeded = true;
            wasmtime::bail!(
                "stage {} exceeded its memory cap of {} bytes",
                self.stage,
                self.memory_cap
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 10_000)
    }

    fn instances(&self) -> usize {
        16 * self.stages
    }

    fn tables(&self) -> usize {
        16 * self.stages
    }

    fn memories(&self) -> usize {
        4 * self.stages
    }
}

/// The linker every stage is instantiated with: `tenet:policy/types`
/// (type definitions only, so an instance with nothing in it) and
/// `tenet:policy/host` with exactly `log`. A component whose imports need
/// anything else (another function under `host`, `log` with another
/// signature, a resource) does not type-check against it and is refused
/// when it is loaded.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    linker.instance("tenet:policy/types@0.1.0")?;
    linker
        .instance("tenet:policy/host@0.1.0")?
        .func_wrap("log", log)?;
    Ok(linker)
}

/// Takes `cost` fuel from the calling stage, or ends it out of fuel.
fn charge(cx: &mut StoreContextMut<'_, HostState>, cost: u64) -> wasmtime::Result<()> {
    let left = cx.get_fuel()?;
    if left < cost {
        cx.set_fuel(0)?;
        return Err(Trap::OutOfFuel.into());
    }
    cx.set_fuel(left - cost)
}

/// `host.log(level, message)`.
fn log(
    mut cx: StoreContextMut<'_, HostState>,
    (level, message): (Level, WasmStr),
) -> wasmtime::Result<()> {
    // Validated where it lies (a borrow of the guest's memory, no copy);
    // only what is kept is copied, clipped and escaped.
    let (len, kept) = {
        let text = message.to_str(&cx)?;
        let st = cx.data();
        let room = log_limits::STAGE_BYTES.saturating_sub(st.log_bytes);
        let kept = (st.log_lines < log_limits::LINES && room > 0)
            .then(|| super::clip_text(&text, log_limits::LINE_BYTES.min(room)));
        (text.len() as u64, kept)
    };
    charge(
        &mut cx,
        log_limits::CALL_FUEL.saturating_add(len.saturating_mul(log_limits::BYTE_FUEL)),
    )?;
    let st = cx.data_mut();
    st.log_lines = st.log_lines.saturating_add(1);
    let Some(msg) = kept else {
        if !st.log_dropped {
            st.log_dropped = true;
            tracing::warn!(stage = %st.stage, "stage log limit reached; further lines dropped");
        }
        return Ok(());
    };
    st.log_bytes += msg.len();
    let stage = st.stage.as_str();
    match level {
        Level::Trace => tracing::trace!(target: "tenet::guest", stage, "{msg}"),
        Level::Debug => tracing::debug!(target: "tenet::guest", stage, "{msg}"),
        Level::Info => tracing::info!(target: "tenet::guest", stage, "{msg}"),
        Level::Warn => tracing::warn!(target: "tenet::guest", stage, "{msg}"),
        Level::Error => tracing::error!(target: "tenet::guest", stage, "{msg}"),
    }
    Ok(())
}

/// The ticker of one pipeline: what advances the engine's epoch every
/// [`TICK`] while a run may execute guest code.
///
/// Two kinds:
/// - **a thread** (tenetctl, tests, the daemon: anything that loads several
///   pipelines per process): it ticks while a run is armed and waits
///   otherwise; dropping it ends the thread;
/// - **an interval timer** (`setitimer(ITIMER_REAL)`, `SIGALRM`) in a
///   one-shot process (the CNI binary, one pipeline per exec): creating,
///   starting and reaping a thread cost more than the whole run of a small
///   stage (docs/perf.md), while the timer costs a `sigaction` once and two
///   `setitimer` per run. The signal handler only increments the epoch (an
///   atomic add, async-signal-safe), and the timer runs only during a run
///   ([`Ticker::arm`]): nothing else in the exec sees the signal. One
///   engine per process can own the timer; any other gets a thread.
pub(crate) enum Ticker {
    /// The thread waits for a message while no run is armed, so an idle
    /// pipeline (the daemon keeps several) costs no wakeups; dropping the
    /// sender ends it.
    Thread {
        wake: mpsc::Sender<()>,
        armed: Arc<AtomicUsize>,
    },
    Alarm,
}

/// The engine the `SIGALRM` handler ticks (set once per process).
static ALARM_ENGINE: OnceLock<Engine> = OnceLock::new();

extern "C" fn on_alarm(_signal: libc::c_int) {
    // A load and an atomic add: async-signal-safe.
    if let Some(engine) = ALARM_ENGINE.get() {
        engine.increment_epoch();
    }
}

impl Ticker {
    /// Starts ticking `engine`: with the interval timer when `one_shot`
    /// and no other engine owns it, else with a thread.
    pub(crate) fn start(engine: &Engine, one_shot: bool) -> std::io::Result<Self> {
        if one_shot && Self::install_alarm(engine) {
            return Ok(Ticker::Alarm);
        }
        let (wake, rx) = mpsc::channel::<()>();
        let armed = Arc::new(AtomicUsize::new(0));
        let engine = engine.clone();
        let running = armed.clone();
        std::thread::Builder::new()
            .name("tenet-epoch".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                // Ends when the sender is dropped (disconnected). `arm`
                // counts up before it sends, so a wake-up is never lost:
                // either this sees the count, or the message is queued.
                loop {
                    if running.load(Ordering::Acquire) == 0 {
                        if rx.recv().is_err() {
                            return;
                        }
                        continue;
                    }
                    match rx.recv_timeout(TICK) {
                        Err(mpsc::RecvTimeoutError::Timeout) => engine.increment_epoch(),
                        Ok(()) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })?;
        Ok(Ticker::Thread { wake, armed })
    }

    /// Makes `engine` the one the `SIGALRM` handler ticks, installing the
    /// handler; false if another engine has it or the handler cannot be
    /// installed (the caller then uses a thread).
    fn install_alarm(engine: &Engine) -> bool {
        static INSTALLED: OnceLock<bool> = OnceLock::new();
        if !Engine::same(ALARM_ENGINE.get_or_init(|| engine.clone()), engine) {
            return false;
        }
        *INSTALLED.get_or_init(|| {
            // SAFETY: a zeroed sigaction is valid; the handler only does an
            // atomic load and add. SA_RESTART: a system call the signal
            // interrupts (a log write) resumes instead of failing EINTR.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as libc::sighandler_t;
                sa.sa_flags = libc::SA_RESTART | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()) == 0
            }
        })
    }

    /// Makes the epoch advance until the guard is dropped: the interval
    /// timer runs only while a run may execute guest code (a thread ticks
    /// anyway). Fails closed: without ticks no deadline holds.
    pub(crate) fn arm(&self) -> std::io::Result<Armed> {
        match self {
            Ticker::Thread { wake, armed } => {
                if armed.fetch_add(1, Ordering::AcqRel) == 0 {
                    // The thread is gone only if it panicked: fail closed.
                    wake.send(()).map_err(|_| {
                        armed.fetch_sub(1, Ordering::AcqRel);
                        std::io::Error::other("the ticker thread ended")
                    })?;
                }
                Ok(Armed::Thread(armed.clone()))
            }
            Ticker::Alarm => {
                set_alarm(TICK)?;
                Ok(Armed::Alarm)
            }
        }
    }
}

/// The epoch advancing (see [`Ticker::arm`]): the interval timer stops, or
/// the thread goes back to waiting once no run is armed, when dropped.
pub(crate) enum Armed {
    Thread(Arc<AtomicUsize>),
    Alarm,
}

impl Drop for Armed {
    fn drop(&mut self) {
        match self {
            Armed::Thread(armed) => {
                armed.fetch_sub(1, Ordering::AcqRel);
            }
            Armed::Alarm => {
                let _ = set_alarm(Duration::ZERO);
            }
        }
    }
}

/// `setitimer(ITIMER_REAL)` with `every` as first expiry and interval
/// (zero stops it).
fn set_alarm(every: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: every.as_secs() as libc::time_t,
        tv_usec: every.subsec_micros() as libc::suseconds_t,
    };
    let it = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: `it` is a valid itimerval; the old value is not asked for.
    if unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_whole_ticks_plus_one() {
        assert_eq!(ticks(1), 2);
        assert_eq!(ticks(5), 2);
        assert_eq!(ticks(6), 3);
        assert_eq!(ticks(100), 21);
    }
}
