"""Audio for sampled music: FluidSynth with a SoundFont when there is one, else a built-in synth.

FluidSynth (through pretty_midi, which needs the ``pyfluidsynth`` module and its
``libfluidsynth``) plays the General MIDI program the file asks for. Without it, a small
additive synthesiser renders every note as a few decaying harmonics, the same for every
program: enough to hear the music, not to judge the timbre. :func:`render` says which of
the two it used and why, so that the caller can tell the user.

The SoundFont is, in this order: the file named by ``$RNNRBM_SOUNDFONT``, the first of
:data:`SOUNDFONT_PATHS` that exists, or the small ``TimGM6mb.sf2`` that pretty_midi ships.

    >>> from rnnrbm_cli.pianoroll import roll_to_midi
    >>> audio = render(roll_to_midi(roll, dt=0.3))  # doctest: +SKIP
    >>> write_wav("out.wav", audio)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import io
import os
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pretty_midi

from rnnrbm_cli._io import atomic_open
from rnnrbm_cli.errors import RnnrbmError

SAMPLE_RATE = 44100  # Hz, CD quality
SOUNDFONT_ENV = "RNNRBM_SOUNDFONT"

#: Where Debian/Ubuntu, Fedora, Arch, Homebrew and MacPorts put a General MIDI SoundFont.
SOUNDFONT_PATHS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM2-2.sf2",
    "/usr/local/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
    "/opt/local/share/sounds/sf2/FluidR3_GM.sf2",
)

# The built-in synth's harmonics (relative amplitudes) and envelope.
_HARMONICS = (1.0, 0.5, 0.3, 0.18, 0.1, 0.06)
_ATTACK_S = 0.005  # a linear rise this long: no click at the onset
_RELEASE_S = 0.08  # an exponential fade after the note ends: no click at the offset
_PEAK = 0.9  # the loudest sample of a file, as a fraction of full scale


@dataclass(frozen=True)
class Audio:
    """A rendered waveform and how it was made."""

    samples: np.ndarray  # shape=(n,), float32 in [-1, 1], mono
    sample_rate: int  # Hz
    method: str  # "fluidsynth" or "builtin"
    soundfont: Path | None  # the .sf2 FluidSynth played, None for the built-in synth
    reason: str | None  # why the built-in synth was used, None for FluidSynth


def find_soundfont() -> Path | None:
    """The SoundFont to use: ``$RNNRBM_SOUNDFONT``, a system one, or pretty_midi's own.

    Raises RnnrbmError if ``$RNNRBM_SOUNDFONT`` is set but names no file: a user who set
    it wants that sound, not a silent substitute.
    """
    named = os.environ.get(SOUNDFONT_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise RnnrbmError(f"${SOUNDFONT_ENV} names {path}, which is not a file; point it at a .sf2 SoundFont or unset it.")
        return path
    bundled = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    for candidate in (*map(Path, SOUNDFONT_PATHS), bundled):
        if candidate.is_file():
            return candidate
    return None


def fluidsynth_problem() -> str | None:
    """Why FluidSynth cannot be used here, or None if pyfluidsynth imports."""
    try:
        import fluidsynth  # noqa: F401
    except ImportError:
        return "the pyfluidsynth module is not installed (pip install pyfluidsynth, with libfluidsynth)"
    except OSError as e:  # the module is there but libfluidsynth is not
        return f"pyfluidsynth cannot load libfluidsynth ({e})"
    return None


def _fluidsynth_choice() -> tuple[str | None, Path | None]:
    """Why FluidSynth cannot render here (None if it can), and the SoundFont it would use."""
    reason = fluidsynth_problem()
    soundfont = None
    if reason is None:
        soundfont = find_soundfont()
        if soundfont is None:
            reason = f"no SoundFont was found (set ${SOUNDFONT_ENV} to a .sf2 file)"
    return reason, soundfont


def render(midi: pretty_midi.PrettyMIDI, sample_rate: int = SAMPLE_RATE) -> Audio:
    """Render ``midi`` to a mono waveform, with FluidSynth if possible, else built in.

    Returns an :class:`Audio` whose ``method`` says which, and whose ``reason`` says why
    FluidSynth was not used.
    """
    reason, soundfont = _fluidsynth_choice()
    if reason is None:
        try:
            samples = _fluidsynth(midi, sample_rate, soundfont)
        except Exception as e:  # a broken SoundFont or library: fall back, and say so
            reason = f"FluidSynth failed ({str(e) or type(e).__name__})"
        else:
            return Audio(_normalise(samples), sample_rate, "fluidsynth", soundfont, None)
    return Audio(synthesize(midi, sample_rate), sample_rate, "builtin", None, reason)


def _fluidsynth(midi: pretty_midi.PrettyMIDI, sample_rate: int, soundfont: Path) -> np.ndarray:
    # pretty_midi 0.2.11 renamed sf2_path to synthesizer (and warns about the old name).
    if "synthesizer" in inspect.signature(midi.fluidsynth).parameters:
        samples = midi.fluidsynth(fs=sample_rate, synthesizer=str(soundfont))
    else:
        samples = midi.fluidsynth(fs=sample_rate, sf2_path=str(soundfont))
    # pretty_midi returns nothing for a file without notes; keep the file's length.
    n = int(np.ceil(midi.get_end_time() * sample_rate))
    return np.pad(samples, (0, max(n - samples.shape[0], 0)))


def synthesize(midi: pretty_midi.PrettyMIDI, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The built-in synth: each note a sum of decaying harmonics with a soft attack and release.

    Parameters
    ----------
    midi : pretty_midi.PrettyMIDI
        Notes of all non-drum instruments are played; the program is ignored.
    sample_rate : int
        Samples per second.

    Returns
    -------
    samples : np.ndarray, shape=(ceil((end_time + release) * sample_rate),), dtype=float32
        Peak-normalised to 0.9 of full scale; all zeros if there is no note.

    The whole piece is held in memory (12 bytes a sample); :func:`write_wav_builtin` writes
    a piece of any length to a file in bounded memory instead.
    """
    return _normalise(np.concatenate(list(_Builtin(midi, sample_rate).blocks())))


class _Builtin:
    """The built-in synth's notes, rendered block by block: what a block needs is the notes
    that sound in it and one tone per pitch, whatever the length of the piece."""

    def __init__(self, midi: pretty_midi.PrettyMIDI, sample_rate: int) -> None:
        notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes]
        self.length = builtin_length(midi.get_end_time(), sample_rate)
        self.release_n = _release_samples(sample_rate)
        spans = []  # (pitch, gain, first sample, samples held), in the notes' order
        for n in notes:
            start = int(round(n.start * sample_rate))
            spans.append((n.pitch, n.velocity / 127.0, start, max(int(round(n.end * sample_rate)) - start, 1)))
        self.spans = spans
        # Each pitch's tone is rendered once, as long as its longest note (and only as far
        # as it is audible: silence is not stored); a note takes the head of it and fades
        # out from its end. float32: a tone is at most 16 s, 88 of them at most ~250 MB.
        longest: dict[int, int] = {}
        for pitch, _, _, held_n in spans:
            longest[pitch] = max(longest.get(pitch, 0), held_n)
        self.tones = {pitch: _tone(pitch, held_n + self.release_n, sample_rate, pad=False).astype(np.float32)
                      for pitch, held_n in longest.items()}
        self.release = np.exp(-np.arange(self.release_n) / (_RELEASE_S * sample_rate))

    def blocks(self, block: int = 2**16):
        """The unnormalised waveform (float64) in consecutive blocks of ``block`` samples."""
        order = sorted(range(len(self.spans)), key=lambda i: self.spans[i][2])
        active: list[int] = []
        upcoming = 0
        for b0 in range(0, self.length, block):
            b1 = min(b0 + block, self.length)
            while upcoming < len(order) and self.spans[order[upcoming]][2] < b1:
                active.append(order[upcoming])
                upcoming += 1
            active = [i for i in active if self.spans[i][2] + self.spans[i][3] + self.release_n > b0]
            out = np.zeros(b1 - b0, dtype=np.float64)
            for i in sorted(active):  # in the notes' order, as the sums always were
                pitch, gain, start, held_n = self.spans[i]
                tone = self.tones[pitch]
                lo = max(b0, start) - start  # the part of this note inside the block, in note samples
                hi = min(b1 - start, held_n + self.release_n, tone.size)
                if hi <= lo:
                    continue
                sound = tone[lo:hi].astype(np.float64)
                if hi > held_n:  # the fade after the note's end
                    fade_from = max(lo, held_n)
                    sound[fade_from - lo :] *= self.release[fade_from - held_n : hi - held_n]
                out[start + lo - b0 : start + hi - b0] += gain * sound
            yield out


def _release_samples(sample_rate: int) -> int:
    return int(5 * _RELEASE_S * sample_rate)  # e^-5: inaudible


def builtin_length(end_time: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples :func:`synthesize` renders for music whose last note ends at ``end_time``
    seconds: the music and the last release. (A bound known before the music is.)"""
    return max(int(np.ceil(end_time * sample_rate)) + _release_samples(sample_rate), 1)


def _tone(pitch: int, n_samples: int, sample_rate: int, pad: bool = True) -> np.ndarray:
    """A held note of the built-in synth at full velocity, ``n_samples`` long (without
    ``pad``, only its audible head: the rest is silence)."""
    freq = 440.0 * 2.0 ** ((pitch - 69) / 12)
    # Low notes ring longer than high ones, as on a piano.
    decay_s = 0.4 + 1.6 * min(1.0, (110.0 / freq) ** 0.5)
    # After 8 decay times (e^-8, -70 dB) a held note is silent: render no further.
    audible = min(n_samples, int(8 * decay_s * sample_rate))
    t = np.arange(audible) / sample_rate
    envelope = np.minimum(t / _ATTACK_S, 1.0) * np.exp(-t / decay_s)
    tone = np.zeros_like(t)
    for h, amplitude in enumerate(_HARMONICS, start=1):
        if h * freq < sample_rate / 2:  # nothing above Nyquist: no aliasing
            # Higher harmonics die away faster: the tone darkens as it decays.
            tone += amplitude * np.exp(-t * (h - 1) / decay_s) * np.sin(2 * np.pi * h * freq * t)
    return np.pad(envelope * tone, (0, n_samples - audible)) if pad else envelope * tone


def _normalise(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float64)
    peak = np.abs(samples).max() if samples.size else 0.0
    if peak > 0:
        samples = samples * (_PEAK / peak)
    return samples.astype(np.float32)


def wav_bytes(audio: Audio) -> bytes:
    """``audio`` as the bytes of a 16-bit mono PCM WAV file (44 bytes of header, then 2 a sample)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(audio.sample_rate)
        w.writeframes(_pcm(audio.samples))
    return buffer.getvalue()


def write_wav(path: str | os.PathLike, audio: Audio) -> Path:
    """Write ``audio`` atomically as a 16-bit mono PCM WAV file; return the path."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        f.write(wav_bytes(audio))
    return path


def _pcm(samples: np.ndarray) -> bytes:
    """float samples in [-1, 1] as 16-bit little-endian PCM, as :func:`wav_bytes` writes them."""
    return np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2").tobytes()


#: The longest piece FluidSynth renders, in seconds. pretty_midi renders a whole piece in
#: memory (about 40 bytes a sample at 44.1 kHz: 1 GB for these 10 minutes); a longer one is
#: played by the built-in synth, which streams into the file, and the reason says so.
FLUIDSYNTH_MAX_SECONDS = 600.0


@dataclass(frozen=True)
class WavWritten:
    """How :func:`render_wav` made a WAV file (the :class:`Audio` fields but the samples)."""

    path: Path
    frames: int  # samples written
    sample_rate: int  # Hz
    method: str  # "fluidsynth" or "builtin"
    soundfont: Path | None  # the .sf2 FluidSynth played, None for the built-in synth
    reason: str | None  # why the built-in synth was used, None for FluidSynth


def render_wav(
    midi: pretty_midi.PrettyMIDI, path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, *,
    on_progress: Callable[[float], None] | None = None,
) -> WavWritten:
    """Render ``midi`` into the WAV file ``path`` (written atomically), in bounded memory.

    As :func:`render`: FluidSynth when it can, else the built-in synth, and ``reason`` says
    why. The built-in synth streams: it renders the piece block by block twice, once to
    find the peak that every file is normalised to and once to write, so that memory does
    not grow with the length (a two-hour piece is 635 MB of WAV, and was 6.8 GB in memory).
    FluidSynth renders a piece whole, so a piece longer than FLUIDSYNTH_MAX_SECONDS goes to
    the built-in synth. ``on_progress`` hears the fraction done, 0..1, after each block.
    """
    path = Path(path)
    reason, soundfont = _fluidsynth_choice()
    seconds = midi.get_end_time()
    if reason is None and seconds > FLUIDSYNTH_MAX_SECONDS:
        reason = (f"FluidSynth renders a piece whole in memory, at most {FLUIDSYNTH_MAX_SECONDS / 60:g} minutes, and this one "
                  f"lasts {seconds / 60:,.1f} (sample fewer --steps or --seconds for FluidSynth's sound)")
    if reason is None:
        try:
            samples = _normalise(_fluidsynth(midi, sample_rate, soundfont))
        except Exception as e:  # a broken SoundFont or library: fall back, and say so
            reason = f"FluidSynth failed ({str(e) or type(e).__name__})"
        else:
            write_wav(path, Audio(samples, sample_rate, "fluidsynth", soundfont, None))
            if on_progress is not None:
                on_progress(1.0)
            return WavWritten(path, samples.size, sample_rate, "fluidsynth", soundfont, None)
    frames = write_wav_builtin(midi, path, sample_rate, on_progress=on_progress)
    return WavWritten(path, frames, sample_rate, "builtin", None, reason)


def write_wav_builtin(
    midi: pretty_midi.PrettyMIDI, path: str | os.PathLike, sample_rate: int = SAMPLE_RATE, *,
    on_progress: Callable[[float], None] | None = None,
) -> int:
    """The built-in synth's rendering of ``midi`` written to ``path`` as a 16-bit mono WAV,
    block by block: the same samples as :func:`synthesize`, in memory that does not grow
    with the piece. Returns the number of samples written."""
    synth = _Builtin(midi, sample_rate)
    done, total = 0, 2 * synth.length

    def heard(n: int) -> None:
        nonlocal done
        done += n
        if on_progress is not None:
            on_progress(done / total)

    peak = 0.0
    for block in synth.blocks():
        peak = max(peak, float(np.abs(block).max()))
        heard(block.size)
    scale = _PEAK / peak if peak > 0 else 1.0
    path = Path(path)
    with atomic_open(path, "wb") as f, wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.setnframes(synth.length)  # the header is right from the start: no seek back
        for block in synth.blocks():
            # _normalise's and wav_bytes' steps, a block at a time
            w.writeframes(_pcm((block * scale).astype(np.float32)))
            heard(block.size)
    return synth.length
