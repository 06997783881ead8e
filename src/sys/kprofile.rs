//! The kernel's tick profile, `/proc/profile` (CONFIG_PROFILING, booted with
//! `profile=N`): on every timer tick each busy CPU adds one hit to the
//! counter of the kernel text address it interrupted, one counter per 2^N
//! bytes from `_stext`. Writing to the file clears the counters. Hits are
//! turned into function names with `/proc/kallsyms` (root sees the real
//! addresses).
//!
//! A tick cannot interrupt code that runs with interrupts off: such time is
//! charged to where interrupts come back on (`_raw_spin_unlock_irqrestore`
//! and friends), which the profile output says.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;

use anyhow::{anyhow, bail, Context, Result};

pub const PROC_PROFILE: &str = "/proc/profile";
const PROC_KALLSYMS: &str = "/proc/kallsyms";

/// Whether the running kernel keeps a tick profile.
pub fn available() -> bool {
    std::path::Path::new(PROC_PROFILE).exists()
}

/// One read of `/proc/profile`: bytes per counter and the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickProfile {
    pub step: u64,
    pub hits: Vec<u32>,
}

impl TickProfile {
    /// Clear the counters.
    pub fn reset() -> Result<()> {
        let mut f =
            OpenOptions::new().write(true).open(PROC_PROFILE).with_context(|| format!("open {PROC_PROFILE}"))?;
        // Not 4 bytes: a 4-byte write would set the profiling multiplier.
        f.write_all(b"0\n").with_context(|| format!("clear {PROC_PROFILE}"))
    }

    pub fn read() -> Result<TickProfile> {
        let raw = fs::read(PROC_PROFILE).with_context(|| format!("read {PROC_PROFILE} (boot with profile=2)"))?;
        Self::parse(&raw)
    }

    /// The file: the step as a native u32, then one native u32 per counter.
    pub fn parse(raw: &[u8]) -> Result<TickProfile> {
        if raw.len() < 8 || raw.len() % 4 != 0 {
            bail!("{PROC_PROFILE}: {} bytes, not a step and counters of 4 bytes each", raw.len());
        }
        let words: Vec<u32> = raw.chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
        let step = u64::from(words[0]);
        if !step.is_power_of_two() {
            bail!("{PROC_PROFILE}: step {step} is not a power of two");
        }
        Ok(TickProfile { step, hits: words[1..].to_vec() })
    }

    /// Hits per bucket index (only the non-zero ones), to sum windows.
    pub fn nonzero(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.hits.iter().enumerate().filter(|(_, &h)| h != 0).map(|(i, &h)| (i, h))
    }
}

/// Kernel text symbols, sorted by address.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kallsyms {
    stext: u64,
    syms: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn read() -> Result<Kallsyms> {
        let text = fs::read_to_string(PROC_KALLSYMS).with_context(|| format!("read {PROC_KALLSYMS}"))?;
        Self::parse(&text).with_context(|| format!("parse {PROC_KALLSYMS}"))
    }

    /// Lines `ADDRESS TYPE NAME [MODULE]`; text symbols (t, T, w, W) only.
    pub fn parse(text: &str) -> Result<Kallsyms> {
        let mut syms = Vec::new();
        let mut stext = None;
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else { continue };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let addr = u64::from_str_radix(addr, 16).map_err(|_| anyhow!("bad address '{addr}'"))?;
            if name == "_stext" {
                stext = Some(addr);
            }
            syms.push((addr, name.to_string()));
        }
        let stext = stext.ok_or_else(|| anyhow!("no _stext symbol"))?;
        if stext == 0 {
            bail!("addresses are hidden (kptr_restrict, or not root)");
        }
        syms.sort();
        Ok(Kallsyms { stext, syms })
    }

    /// The function containing `addr` (the nearest symbol at or below it).
    pub fn function_at(&self, addr: u64) -> Option<&str> {
        let i = self.syms.partition_point(|(a, _)| *a <= addr);
        i.checked_sub(1).map(|i| self.syms[i].1.as_str())
    }

    /// Hits summed per function; `buckets` are (index, hits) of a profile
    /// with `step` bytes per counter. The last counter also collects every
    /// address beyond the text (modules), so it is named as such.
    pub fn attribute(
        &self,
        step: u64,
        len: usize,
        buckets: impl IntoIterator<Item = (usize, u64)>,
    ) -> HashMap<String, u64> {
        let mut per_fn: HashMap<String, u64> = HashMap::new();
        for (i, hits) in buckets {
            let name = if i + 1 == len {
                "[beyond the kernel text]".to_string()
            } else {
                let addr = self.stext + i as u64 * step;
                self.function_at(addr).unwrap_or("[before _stext]").to_string()
            };
            *per_fn.entry(name).or_default() += hits;
        }
        per_fn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    #[test]
    fn profile_file() {
        let p = TickProfile::parse(&raw(&[4, 0, 3, 0, 5])).unwrap();
        assert_eq!(p.step, 4);
        assert_eq!(p.nonzero().collect::<Vec<_>>(), vec![(1, 3), (3, 5)]);
        assert!(TickProfile::parse(&raw(&[3, 1])).is_err());
        assert!(TickProfile::parse(&[1, 2, 3]).is_err());
    }

    const SYMS: &str = "ffffffff81000000 T _stext\n\
        ffffffff81000000 T startup_64\n\
        ffffffff81000100 t helper\n\
        ffffffff81000200 D some_data\n\
        ffffffff81000300 T vhost_worker\n";

    #[test]
    fn symbols_and_attribution() {
        let k = Kallsyms::parse(SYMS).unwrap();
        assert_eq!(k.function_at(0xffffffff81000104), Some("helper"));
        assert_eq!(k.function_at(0xffffffff81000250), Some("helper"), "data symbols are not functions");
        assert_eq!(k.function_at(0xffffffff81000310), Some("vhost_worker"));
        assert_eq!(k.function_at(0xffffffff80000000), None);
        // step 4: bucket 0x41 is 0x104 (helper), 0xc4 is 0x310, the last one is "beyond".
        let per = k.attribute(4, 0x100, [(0x41, 2), (0x40, 1), (0xc4, 7), (0xff, 9)]);
        assert_eq!(per["helper"], 3);
        assert_eq!(per["vhost_worker"], 7);
        assert_eq!(per["[beyond the kernel text]"], 9);
    }

    #[test]
    fn hidden_addresses_are_an_error() {
        assert!(Kallsyms::parse("0000000000000000 T _stext\n0000000000000000 T x\n").is_err());
        assert!(Kallsyms::parse("ffffffff81000300 T vhost_worker\n").is_err());
    }
}
