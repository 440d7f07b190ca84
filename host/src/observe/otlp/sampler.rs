//! Which traces are recorded: `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, as the
//! OpenTelemetry specification names them. The default, `parentbased_always_on`, records
//! every trace whose caller did not say otherwise.

/// A head sampler: decided when a span starts, from its parent's decision and trace id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Records a trace when the low 64 bits of its id fall below this bound, so every
    /// host decides the same for one trace.
    Ratio(u64),
    /// A span with a parent follows the parent's decision; a root follows the inner sampler.
    ParentBased(Root),
}

/// The decision for roots under [`Sampler::ParentBased`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(u64),
}

/// The bad variable, its value, what is wrong and how to fix it.
type Problem = (&'static str, String, &'static str, &'static str);

impl Sampler {
    /// The sampler `OTEL_TRACES_SAMPLER` names, with `OTEL_TRACES_SAMPLER_ARG` as the ratio.
    pub fn from_vars(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, Problem> {
        let ratio = || -> Result<u64, Problem> {
            let Some(arg) = arg else { return Ok(u64::MAX) };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(bound(r)),
                _ => Err((
                    "OTEL_TRACES_SAMPLER_ARG",
                    arg.to_string(),
                    "is not a ratio between 0 and 1",
                    "give e.g. 0.25 to record a quarter of the traces",
                )),
            }
        };
        Ok(match name.map(str::trim).unwrap_or("parentbased_always_on") {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::Ratio(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(ratio()?)),
            other => {
                return Err((
                    "OTEL_TRACES_SAMPLER",
                    other.to_string(),
                    "is not a sampler this host knows",
                    "give always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
                ));
            }
        })
    }

    /// Whether a span of `trace_id` is recorded, given its parent's sampled flag (`None`
    /// for a root).
    pub fn sampled(&self, parent: Option<bool>, trace_id: u128) -> bool {
        match (self, parent) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::Ratio(bound), _) => below(*bound, trace_id),
            (Sampler::ParentBased(_), Some(parent)) => parent,
            (Sampler::ParentBased(Root::AlwaysOn), None) => true,
            (Sampler::ParentBased(Root::AlwaysOff), None) => false,
            (Sampler::ParentBased(Root::Ratio(bound)), None) => below(*bound, trace_id),
        }
    }
}

fn bound(ratio: f64) -> u64 {
    if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio * u64::MAX as f64) as u64
    }
}

fn below(bound: u64, trace_id: u128) -> bool {
    bound == u64::MAX || (trace_id as u64) < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_records_roots_and_follows_parents() {
        let s = Sampler::from_vars(None, None).unwrap();
        assert_eq!(s, Sampler::ParentBased(Root::AlwaysOn));
        assert!(s.sampled(None, 7));
        assert!(s.sampled(Some(true), 7));
        assert!(!s.sampled(Some(false), 7), "a caller that did not sample is followed");
    }

    #[test]
    fn a_ratio_decides_by_trace_id_alike_everywhere() {
        let s = Sampler::from_vars(Some("parentbased_traceidratio"), Some("0.25")).unwrap();
        let recorded = (0..10_000u128)
            .filter(|i| s.sampled(None, i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
            .count();
        assert!((2_000..3_000).contains(&recorded), "{recorded} of 10000 at 0.25");
        assert!(s.sampled(Some(true), u128::MAX), "a sampled parent wins over the ratio");
        let none = Sampler::from_vars(Some("traceidratio"), Some("0")).unwrap();
        assert!(!none.sampled(Some(true), 0) && !none.sampled(None, 0));
        let all = Sampler::from_vars(Some("traceidratio"), Some("1")).unwrap();
        assert!(all.sampled(None, u128::MAX));
    }

    #[test]
    fn unknown_samplers_and_bad_ratios_are_refused() {
        let e = Sampler::from_vars(Some("jaeger_remote"), None).unwrap_err();
        assert_eq!((e.0, e.1.as_str()), ("OTEL_TRACES_SAMPLER", "jaeger_remote"));
        let e = Sampler::from_vars(Some("traceidratio"), Some("1.5")).unwrap_err();
        assert_eq!((e.0, e.1.as_str()), ("OTEL_TRACES_SAMPLER_ARG", "1.5"));
    }
}
