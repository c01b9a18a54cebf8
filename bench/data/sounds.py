"""The ten class sounds of the synthetic datasets: one function per UrbanSound8K class, and `synth_clip`.

Each synthesizer maps (t, sr, params, rng) to a signal that a log-mel CNN can tell apart from the
others; `source_params` draws what all clips of one "source recording" share (pitch, rate, level,
SNR, and a fingerprint), so clips of one source resemble each other as real slices do.
"""

import numpy as np


# --- signal building blocks (t: time in seconds within the source recording) -----------------


def _noise(rng, n, sr, colour=0.0, lo=20.0, hi=None):
    """Unit-variance float32 noise with power ~ f**-colour inside [lo, hi] Hz: random phases, one inverse FFT."""
    size = min(m << (-(-n // m) - 1).bit_length() for m in (1, 3, 5))  # 2**k, 3*2**k, 5*2**k: odd n is 50x slower
    f = np.arange(size // 2 + 1, dtype=np.float32) * np.float32(sr / size)
    gain = ((f >= lo) & (f <= (hi or sr / 2))).astype(np.float32)
    if colour:
        gain *= np.exp(np.log(np.maximum(f, np.float32(lo))) * np.float32(-colour / 2))
    phase = rng.random(f.size, dtype=np.float32) * np.float32(2 * np.pi)
    spec = np.empty(f.size, np.complex64)
    spec.real, spec.imag = gain * np.cos(phase), gain * np.sin(phase)
    x = np.fft.irfft(spec, size)[:n]
    return x / (x.std() + 1e-12)


def _tones(f0, sr, n_harm=1, tilt=1.0):
    """Harmonics of a (time-varying) fundamental f0 [Hz], amplitude k**-tilt, those reaching 0.45*sr dropped."""
    f0 = np.asarray(f0, np.float32)
    cycles = np.cumsum(f0 * np.float32(1 / sr))  # float32 is plenty here, and fast
    phase = np.float32(2 * np.pi) * (cycles - np.floor(cycles))
    prev, cur, twice_cos = np.zeros_like(phase), np.sin(phase), 2 * np.cos(phase)
    out = cur.copy()
    for k in range(2, min(n_harm, int(0.45 * sr / f0.max())) + 1):  # sin(kx) = 2cos(x)sin((k-1)x) - sin((k-2)x)
        prev, cur = cur, twice_cos * cur - prev
        out += np.float32(k**-tilt) * cur
    return out


def _onsets(rng, t, gap_lo, gap_hi):
    """Random event onsets [s] with gaps in [gap_lo, gap_hi], covering the span of t (and a bit before)."""
    gaps = rng.uniform(gap_lo, gap_hi, int((t[-1] - t[0]) / gap_lo) + 3)
    return t[0] - gap_hi + np.cumsum(gaps)


def _gate(t, onsets, lengths, attack=0.005, tau=None):
    """Envelope of events at `onsets`, each lengths[i] s long, linear attack, optional exponential decay.
    Returns (envelope, seconds since the latest onset)."""
    onsets = np.asarray(onsets, np.float32)
    i = np.maximum(np.searchsorted(onsets, t, side="right") - 1, 0)
    since = t - onsets[i]
    env = np.clip(since / attack, 0.0, 1.0) * (since < np.broadcast_to(lengths, onsets.shape)[i])
    return (env * np.exp(-since / tau) if tau else env), since


# --- the ten class synthesizers: (t, sr, params, rng) -> signal --------------------------------


def _air_conditioner(t, sr, p, rng):  # steady harmonic hum over low broadband noise
    f0 = 55 * p["pitch"] * (1 + 0.003 * np.sin(2 * np.pi * 0.2 * t))
    return _tones(f0, sr, 8, 1.0) + 0.7 * _noise(rng, t.size, sr, 1.0, 40, 1500 * p["pitch"])


def _car_horn(t, sr, p, rng):  # steady two-note honks, short beeps to long blasts
    on = _onsets(rng, t, 0.4 / p["rate"], 1.6 / p["rate"])
    env, _ = _gate(t, on, rng.uniform(0.15, 1.2, on.size), attack=0.02)
    f0 = np.full(t.size, 400 * p["pitch"])
    return env * (_tones(f0, sr, 8, 0.7) + _tones(1.26 * f0, sr, 8, 0.7))


def _children_playing(t, sr, p, rng):  # babble: gliding voices and band noise, syllable-rate AM
    am = np.maximum(0, sum(np.sin(2 * np.pi * rng.uniform(2, 7) * p["rate"] * t + rng.uniform(0, 7)) for _ in range(3)))
    voices = sum(
        _tones(
            300 * p["pitch"] * 2 ** rng.uniform(-0.4, 0.4) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t)),
            sr,
            6,
            1.2,
        )
        for _ in range(3)
    )
    return am * (voices + 0.5 * _noise(rng, t.size, sr, 0.5, 300, 4000))


def _dog_bark(t, sr, p, rng):  # short pitched noisy bursts with a falling pitch
    on = _onsets(rng, t, 0.3 / p["rate"], 1.2 / p["rate"])
    env, since = _gate(t, on, rng.uniform(0.08, 0.25, on.size), tau=0.08)
    f0 = 550 * p["pitch"] * (1 - 0.4 * np.minimum(since / 0.25, 1))
    return env * (_tones(f0, sr, 8, 1.0) + 0.6 * _noise(rng, t.size, sr, 0.0, 300, 3500))


def _drilling(t, sr, p, rng):  # high broadband noise and a whine, fast amplitude modulation
    am = 0.55 + 0.45 * np.sin(2 * np.pi * 45 * p["rate"] * t)
    return am * (
        _noise(rng, t.size, sr, 0.0, 1000 * p["pitch"], 12000)
        + 0.5 * _tones(np.full(t.size, 1800 * p["pitch"]), sr, 3, 1.0)
    )


def _engine_idling(t, sr, p, rng):  # low rumble: many harmonics of a firing rate, low noise
    f0 = np.full(t.size, 30 * p["pitch"])
    return (1 + 0.4 * np.sin(np.pi * f0 * t)) * _tones(f0, sr, 12, 0.6) + 0.8 * _noise(rng, t.size, sr, 2.0, 20, 800)


def _gun_shot(t, sr, p, rng):  # one or two impulsive bangs with a reverberant tail
    on = np.sort(t[0] + rng.uniform(0, 0.7, rng.integers(1, 3)) * (t[-1] - t[0]))
    bang, _ = _gate(t, on, 9.0, attack=0.001, tau=0.05 / p["rate"])
    tail, _ = _gate(t, on, 9.0, attack=0.01, tau=0.4)
    return (bang + 0.15 * tail) * _noise(rng, t.size, sr, 0.5, 50, 9000)


def _jackhammer(t, sr, p, rng):  # periodic impulses, switched on and off
    rate = 14 * p["rate"]
    on = np.sin(2 * np.pi * 0.3 * p["rate"] * t + 7 * p["variant"]) > -0.6
    return on * np.exp(-((t * rate) % 1.0) / (rate * 0.015)) * _noise(rng, t.size, sr, 0.3, 80, 6000)


def _siren(t, sr, p, rng):  # frequency sweeps: a wail or a hi-lo two-tone
    if p["variant"] < 0.5:
        f = 900 * p["pitch"] * (1 + 0.35 * np.sin(2 * np.pi * 0.4 * p["rate"] * t))
    else:
        f = 900 * p["pitch"] * np.where((1.5 * p["rate"] * t) % 1 < 0.5, 1.0, 0.75)
    return _tones(f, sr, 4, 1.5)


def _street_music(t, sr, p, rng):  # a chord sequence on the beat, with a kick drum
    beat, roots = 0.5 / p["rate"], np.array([0, 5, 7, 3, 10, 0, 8, 5])
    root = 220 * p["pitch"] * 2 ** (roots[(np.floor(t / (2 * beat)).astype(int) + int(8 * p["variant"])) % 8] / 12)
    since = t % beat
    chord = sum(_tones(root * 2 ** (s / 12), sr, 5, 1.5) for s in (0, 4, 7))
    return np.exp(-since / (0.6 * beat)) * chord + 1.5 * np.exp(-since / 0.05) * np.sin(2 * np.pi * 55 * t)


SYNTHS = (
    _air_conditioner,
    _car_horn,
    _children_playing,
    _dog_bark,
    _drilling,
    _engine_idling,
    _gun_shot,
    _jackhammer,
    _siren,
    _street_music,
)


def source_params(rng):
    """What all clips of one source recording share: variation (pitch, rate, level, SNR) and fingerprint (sig_*)."""
    return dict(
        pitch=2 ** rng.uniform(-0.5, 0.5),
        rate=2 ** rng.uniform(-0.4, 0.4),
        level=rng.uniform(0.1, 0.9),
        snr_db=rng.uniform(6, 24),
        variant=rng.random(),
        delay=int(rng.integers(0, 30)),
        side_gain=rng.uniform(0.6, 1.0),
        sig_freq=150 * 2 ** rng.uniform(0, 4.5),
        sig_colour=rng.uniform(-1, 2),
    )


def synth_clip(kind, n, sr, rng, source, *, signature=0.0, start=0.0, channels=1, salience=1):
    """One clip of synthesizer `kind` (class index, taken mod 10): float32 [n] (mono) or [n, channels].
    `source` comes from `source_params`; `start` is the clip's time in the source recording; salience 2
    (background) lowers the SNR; `signature` in 0..1 mixes in the source's fingerprint."""
    t = np.float32(start) + np.arange(n, dtype=np.float32) * np.float32(1 / sr)
    p = dict(source, pitch=source["pitch"] * 2 ** rng.normal(0, 0.02))
    x = SYNTHS[kind % 10](t, sr, p, rng)
    x = x / (np.abs(x).max() + 1e-9)
    colour = (1 - signature) * rng.uniform(-1, 2) + signature * source["sig_colour"]
    x = x + 0.3 * 10 ** (-(source["snr_db"] - 10 * (salience - 1)) / 20) * _noise(rng, n, sr, colour)
    if signature:  # the fingerprint's tone, at the source's own frequency
        step = np.float32(2 * np.pi * min(source["sig_freq"], 0.4 * sr) / sr)
        x = x + 0.1 * signature * np.sin(step * np.arange(n, dtype=np.float32))
    x = x / (np.abs(x).max() + 1e-9) * min(0.99, source["level"] * 2 ** rng.normal(0, 0.1))
    if channels == 2:
        d = min(source["delay"], n)
        x = np.stack([x, source["side_gain"] * np.concatenate([np.zeros(d), x[: n - d]])], axis=1)
    return x.astype(np.float32)
