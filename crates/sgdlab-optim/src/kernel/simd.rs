//! The instruction-set levels the kernels are compiled for, and `multiversion!`, which
//! compiles a loop once per level and dispatches at run time.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level the kernels are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum SimdLevel {
    /// The target's baseline (SSE2 on x86-64, NEON on aarch64; scalar elsewhere).
    Baseline = 1,
    /// x86-64 with AVX2.
    Avx2 = 2,
    /// x86-64 with AVX-512F.
    Avx512 = 3,
}

impl SimdLevel {
    /// The levels this CPU can run, from the baseline up.
    pub fn available() -> Vec<SimdLevel> {
        let mut levels = vec![SimdLevel::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                levels.push(SimdLevel::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                levels.push(SimdLevel::Avx512);
            }
        }
        levels
    }

    /// The level of the element loops over full-precision state (the update rules' plain
    /// loops): [`SimdLevel::current`], except on AMD's Zen 3 and Zen 4 (CPU family 25), whose
    /// AVX-512 runs on 256-bit units, where AVX2 unless a level was forced. Every level gives
    /// the same bits; only the speed differs (measured on a Zen 4 EPYC, one thread, 10M
    /// parameters: Adam 1.1x, Lion 1.1x, SGD with momentum 0.97x of AVX-512; the bfloat16
    /// state loops, 1.25x faster with AVX-512, keep it).
    pub fn plain() -> SimdLevel {
        let level = Self::current();
        if level == SimdLevel::Avx512
            && FORCED.load(Ordering::Relaxed) == 0
            && cpu().zen_avx512_halves
        {
            SimdLevel::Avx2
        } else {
            level
        }
    }

    /// The level steps use: the widest available, unless [`SimdLevel::force`] chose another.
    pub fn current() -> SimdLevel {
        match FORCED.load(Ordering::Relaxed) {
            2 => SimdLevel::Avx2,
            3 => SimdLevel::Avx512,
            1 => SimdLevel::Baseline,
            _ => {
                *DETECTED.get_or_init(|| *Self::available().last().unwrap_or(&SimdLevel::Baseline))
            }
        }
    }

    /// Forces a level for the whole process (`None` restores automatic choice); for tests
    /// and benchmarks. A level the CPU lacks falls back to the widest available.
    pub fn force(level: Option<SimdLevel>) {
        let level = level.filter(|l| Self::available().contains(l));
        FORCED.store(level.map_or(0, |l| l as u8), Ordering::Relaxed);
    }

    /// The level's name (`baseline`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Baseline => "baseline",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }
}

static FORCED: AtomicU8 = AtomicU8::new(0);
static DETECTED: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();

/// Defines `$name(level, args...)`: calls the `#[inline(always)]` function `$inner` compiled
/// for the baseline, for AVX2 or for AVX-512F according to `level` (x86-64; the baseline
/// elsewhere). Its generic parameters are written with their bounds (`<R: UpdateRule, T:
/// Real>`): a kernel generic over the rule gets one copy per rule and level, small enough
/// for the rule's element closures to be inlined into it whatever the number of rules. The same source is compiled three times, so every level computes the same
/// IEEE operations in the same order.
///
/// Built with `--cfg sgdlab_mutants` (what `scripts/mutants` sets), every level runs the
/// baseline copy: a mutant then compiles its kernel once instead of three times (the
/// rebuild of the library and its tests for one mutant: 74 s → 42 s on 2 cores). The copies
/// share their source, and the tests check that the levels agree bit for bit, so mutation
/// testing loses nothing a mutant could change in one copy alone.
macro_rules! multiversion {
    ($vis:vis fn $name:ident<$($G:ident: $B:path),+>($($arg:ident: $ty:ty),*) $(-> $ret:ty)? = $inner:ident) => {
        $vis fn $name<$($G: $B),+>(level: SimdLevel, $($arg: $ty),*) $(-> $ret)? {
            #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<$($G: $B),+>($($arg: $ty),*) $(-> $ret)? {
                $inner($($arg),*)
            }
            #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512<$($G: $B),+>($($arg: $ty),*) $(-> $ret)? {
                $inner($($arg),*)
            }
            match level {
                #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
                // SAFETY: `SimdLevel::available` only offers AVX2 when the CPU reports it.
                SimdLevel::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(all(target_arch = "x86_64", not(sgdlab_mutants)))]
                // SAFETY: `SimdLevel::available` only offers AVX-512F when the CPU reports it.
                SimdLevel::Avx512 => unsafe { avx512($($arg),*) },
                _ => $inner($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// What the kernels' run-time choices need to know about the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cpu {
    /// An AMD CPU of family 25 (Zen 3, Zen 4): AVX-512, where it has it, on 256-bit units,
    /// and a hardware prefetcher that software prefetches slow down.
    pub(crate) zen_avx512_halves: bool,
}

/// The CPU this process runs on (read once).
pub(crate) fn cpu() -> Cpu {
    static CPU: std::sync::OnceLock<Cpu> = std::sync::OnceLock::new();
    *CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            // CPUID leaves 0 (the vendor) and 1 (the signature) exist on every x86-64 CPU.
            let (vendor, signature) = (__cpuid(0), __cpuid(1).eax);
            let amd =
                (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
            // The family: the base family, plus the extended family when the base is 15.
            let base = (signature >> 8) & 0xf;
            let family = if base == 0xf {
                base + ((signature >> 20) & 0xff)
            } else {
                base
            };
            Cpu {
                zen_avx512_halves: amd && family == 25,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Cpu::default()
    })
}
