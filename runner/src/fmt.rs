//! Numbers as a person writes them, for everything `runner` prints: counts with their noun in
//! the singular for one (`1 thread`, `2 threads`) and hyperparameters in their shortest form
//! (`1e-3`, `0.1`, `2.5e-4`), never an f32 widened to f64 (`0.000100000005`); and count flags
//! read back with a message that says what a count is.
//!
//! Leaves out: locale-dependent separators (thousands are `ckpt::thousands`' commas).

/// "1 round", "3 rounds", "0 tokens": `n` and `noun`, plural unless `n` is one. Nouns here
/// take a plain `s`.
pub fn counted(n: u64, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// "1 thread", "2 threads".
pub fn threads(n: usize) -> String {
    counted(n as u64, "thread")
}

/// A hyperparameter (learning rate, weight decay, temperature) in the shortest form that
/// reads back as the same `f32`: scientific below 0.01 and from 1e6 (`1e-3`, `2.5e-4`),
/// plain between (`0.1`, `3`, `0.95`). A value computed in f32 (`lr / 10`) that lands one
/// unit in the last place beside a short decimal prints as that decimal when it is within
/// f32's rounding of it (at most 7 significant digits are shown).
pub fn short(x: f32) -> String {
    if !x.is_finite() || x == 0.0 {
        return format!("{x}");
    }
    // The fewest significant digits (1..=7) whose decimal is within about one f32 ulp of x:
    // an f32 holds ~7.2 digits, so 7 always suffice, and a neighbour of 1e-4 reads as 1e-4.
    let tolerance = f64::from(x.abs()) * f64::from(f32::EPSILON);
    let mut mantissa_exp = format!("{:.6e}", f64::from(x));
    for digits in 0..7 {
        let candidate = format!("{:.*e}", digits, f64::from(x));
        let value: f64 = candidate.parse().expect("a formatted float parses");
        if (value - f64::from(x)).abs() <= tolerance {
            mantissa_exp = candidate;
            break;
        }
    }
    let value: f64 = mantissa_exp.parse().expect("a formatted float parses");
    let (mantissa, exp) = mantissa_exp
        .split_once('e')
        .expect("scientific notation has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    if (-2..6).contains(&exp) {
        // Plain: Display of the short f64 has no trailing zeros and no exponent here.
        format!("{value}")
    } else {
        format!("{mantissa}e{exp}")
    }
}

/// Parses a count flag (`--steps`, `--batch`, …): a whole number of at least 1, with a
/// message that says so for `-1`, `0`, `1e3` or `ten` (clap's own reads "unexpected argument"
/// or "invalid digit").
pub fn parse_count(s: &str) -> Result<u64, String> {
    match s.trim().parse::<i128>() {
        Ok(n) if n >= 1 && n <= i128::from(u64::MAX) => Ok(n as u64),
        Ok(n) if n < 1 => Err(format!("{n} is not a count: it must be at least 1")),
        Ok(_) => Err("too large".to_string()),
        Err(_) => Err(format!(
            "{s:?} is not a whole number (write counts as digits, e.g. 5000, not 5e3)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_for_one() {
        assert_eq!(counted(1, "thread"), "1 thread");
        assert_eq!(counted(0, "token"), "0 tokens");
        assert_eq!(counted(2, "round"), "2 rounds");
        assert_eq!(threads(1), "1 thread");
        assert_eq!(threads(16), "16 threads");
    }

    #[test]
    fn counts_parse_with_a_clear_message() {
        assert_eq!(parse_count("5000"), Ok(5000));
        assert!(parse_count("-1").unwrap_err().contains("at least 1"));
        assert!(parse_count("0").unwrap_err().contains("at least 1"));
        assert!(parse_count("1e3").unwrap_err().contains("whole number"));
    }

    #[test]
    fn hyperparameters_print_as_written() {
        assert_eq!(short(1e-3), "1e-3");
        assert_eq!(short(1e-3 / 10.0), "1e-4"); // the default --min-lr, computed in f32
        assert_eq!(short(3e-3 / 10.0), "3e-4");
        assert_eq!(short(3e-3), "3e-3");
        assert_eq!(short(2.5e-4), "2.5e-4");
        assert_eq!(short(6e-4), "6e-4");
        assert_eq!(short(0.1), "0.1");
        assert_eq!(short(0.01), "0.01");
        assert_eq!(short(0.95), "0.95");
        assert_eq!(short(0.8), "0.8");
        assert_eq!(short(1.0), "1");
        assert_eq!(short(3.0), "3");
        assert_eq!(short(123.5), "123.5");
        assert_eq!(short(2e6), "2e6");
        assert_eq!(short(0.0), "0");
        assert_eq!(short(1.2345678e-5), "1.234568e-5");
        assert_eq!(short(-1e-3), "-1e-3");
        // Every printed value reads back as the same f32, or as its f32 rounding neighbour.
        for x in [1e-3f32, 1e-3 / 10.0, 0.1, 0.7, 3.3e-4, 1.0 / 3.0] {
            let back: f32 = short(x).parse().unwrap();
            assert!((back - x).abs() <= x * f32::EPSILON, "{x} → {}", short(x));
        }
    }
}
