//! Faults on demand, per cluster, at runtime: added latency, a share of error responses, a
//! share of dropped connections, a full partition, slow watches. Shares are applied
//! deterministically (an accumulator, not a random draw), so a test asking for 0.25 gets
//! exactly every fourth request.

use std::time::Duration;

use serde_json::{Value, json};

/// The faults of one cluster. `Faults::default()` is a healthy cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Added before every answer.
    pub latency: Duration,
    /// Share (0.0 to 1.0) of resource requests answered with `error_code`.
    pub error_rate: f64,
    /// 429, 500 or 503 (others are used as given).
    pub error_code: u16,
    /// Share (0.0 to 1.0) of requests whose connection is closed without an answer.
    pub drop_rate: f64,
    /// Every request's connection is closed without an answer.
    pub partition: bool,
    /// Added before every watch event.
    pub watch_delay: Duration,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    Pass,
    Error(u16),
    Drop,
}

/// Faults plus the accumulators that turn shares into decisions.
#[derive(Debug, Default)]
pub struct FaultState {
    pub faults: Faults,
    error_acc: f64,
    drop_acc: f64,
}

impl FaultState {
    pub fn decide(&mut self) -> Decision {
        let f = &self.faults;
        if f.partition {
            return Decision::Drop;
        }
        self.drop_acc += f.drop_rate.clamp(0.0, 1.0);
        if self.drop_acc >= 1.0 - 1e-9 {
            self.drop_acc -= 1.0;
            return Decision::Drop;
        }
        self.error_acc += f.error_rate.clamp(0.0, 1.0);
        if self.error_acc >= 1.0 - 1e-9 {
            self.error_acc -= 1.0;
            return Decision::Error(if f.error_code == 0 { 503 } else { f.error_code });
        }
        Decision::Pass
    }

    pub fn set(&mut self, faults: Faults) {
        *self = FaultState {
            faults,
            error_acc: 0.0,
            drop_acc: 0.0,
        };
    }
}

impl Faults {
    /// The admin endpoint's JSON form.
    pub fn to_json(&self) -> Value {
        json!({
            "latencyMs": self.latency.as_millis() as u64,
            "errorRate": self.error_rate,
            "errorCode": self.error_code,
            "dropRate": self.drop_rate,
            "partition": self.partition,
            "watchDelayMs": self.watch_delay.as_millis() as u64,
        })
    }

    /// Reads the admin endpoint's JSON form; missing keys are healthy defaults.
    pub fn from_json(v: &Value) -> Result<Faults, String> {
        let obj = v.as_object().ok_or("faults must be a JSON object")?;
        for k in obj.keys() {
            if ![
                "latencyMs",
                "errorRate",
                "errorCode",
                "dropRate",
                "partition",
                "watchDelayMs",
            ]
            .contains(&k.as_str())
            {
                return Err(format!("unknown fault {k:?}"));
            }
        }
        let ms = |k: &str| -> Result<Duration, String> {
            match &v[k] {
                Value::Null => Ok(Duration::ZERO),
                n => n
                    .as_u64()
                    .map(Duration::from_millis)
                    .ok_or_else(|| format!("{k} must be a non-negative integer")),
            }
        };
        let share = |k: &str| -> Result<f64, String> {
            match &v[k] {
                Value::Null => Ok(0.0),
                n => n
                    .as_f64()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("{k} must be a number from 0 to 1")),
            }
        };
        Ok(Faults {
            latency: ms("latencyMs")?,
            error_rate: share("errorRate")?,
            error_code: match &v["errorCode"] {
                Value::Null => 503,
                n => n
                    .as_u64()
                    .and_then(|c| u16::try_from(c).ok())
                    .filter(|c| (400..600).contains(c))
                    .ok_or("errorCode must be an HTTP error code (400-599)")?,
            },
            drop_rate: share("dropRate")?,
            partition: match &v["partition"] {
                Value::Null => false,
                b => b.as_bool().ok_or("partition must be a boolean")?,
            },
            watch_delay: ms("watchDelayMs")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_exact_and_deterministic() {
        let mut s = FaultState::default();
        s.set(Faults {
            error_rate: 0.25,
            error_code: 429,
            ..Default::default()
        });
        let d: Vec<Decision> = (0..8).map(|_| s.decide()).collect();
        assert_eq!(d.iter().filter(|d| **d == Decision::Error(429)).count(), 2);
        s.set(Faults {
            partition: true,
            ..Default::default()
        });
        assert_eq!(s.decide(), Decision::Drop);
    }

    #[test]
    fn json_round_trip_and_validation() {
        let f = Faults::from_json(&json!({"latencyMs": 5, "errorRate": 0.5, "errorCode": 500}))
            .expect("valid");
        assert_eq!(Faults::from_json(&f.to_json()), Ok(f));
        assert!(Faults::from_json(&json!({"errorRate": 2})).is_err());
        assert!(Faults::from_json(&json!({"latency": 5})).is_err());
        assert!(Faults::from_json(&json!({"errorCode": 200})).is_err());
    }
}
