"""Seeded fuzz of the header checks of GIFs and JPEGs against what the decoders do.

Random GIF block structures (frames of every size and offset, extensions, damage) and random
JPEG marker sequences (repeated, dropped and doubled scans, comment segments full of
start-of-scan bytes, other sizes in the frame header, damage) go through `decode.check_image`
in a fresh process. It may only answer with a reason or an InvalidArgumentError, and every
image it accepts must decode within the limits, to the size `decode.image_shape` reads (a
damaged GIF, to at most that), that size agreeing with an independent walk of the GIF's
blocks, and a JPEG's scans and coefficients as an independent walk of its markers finds them
within their bounds. The process's peak memory and slowest item are bounded too. (It found
the damaged GIFs that decode to a strip of their first frames.)
"""

import json
import struct

import numpy as np
from child_process import peak_growth
from image_samples import encode, gif_frames, natural_image

# Small limits: an accepted image decodes in well under a megabyte, so a wrongly accepted
# bomb (a 20000 x 20000 GIF, a CMYK JPEG of 4 x 30000 x 30000 coefficients) shows in the peak.
LIMITS = {"max_pixels": 40_000, "max_aspect": 8.0, "max_bytes": 1 << 20}
ITEMS = 250  # of each format
MEMORY_BOUND_MIB = 150
SLOWEST_S = 2.0


def _log_uniform(rng, high):
    return int(np.exp(rng.uniform(0, np.log(high))))


def random_gif(rng):
    """(a GIF of 0-5 frames of random sizes and offsets with random extensions, sometimes
    damaged; whether it is intact, with frames of at least one pixel)."""
    frames = []
    for _ in range(rng.integers(0, 6)):
        width, height = _log_uniform(rng, 600), _log_uniform(rng, 600)
        if rng.random() < 0.15:  # a strip, as in the crossed-frames bomb
            width, height = (_log_uniform(rng, 30000), 1)[:: 1 if rng.random() < 0.5 else -1]
        frames.append((width, height, _log_uniform(rng, 400) - 1, _log_uniform(rng, 400) - 1))
    comment = b"\x21\xfe" + b"\x05hello" * int(rng.integers(0, 4)) + b"\x00"
    control = b"\x21\xf9\x04\x00\x00\x00\x00\x00"
    extra = b"".join([comment, control][k] for k in rng.integers(0, 2, rng.integers(0, 3)))
    screen = (_log_uniform(rng, 600), _log_uniform(rng, 600))
    data = gif_frames(screen, frames, extra=extra)
    if rng.random() < 0.3:
        return _damaged(rng, data), False
    return data, bool(frames) and min(min(w, h) for w, h, _, _ in frames) > 0


def _segments(data):
    """(start, end) of each segment of a JPEG written by PIL, a scan with its entropy data."""
    found, at = [], 2
    while at + 4 <= len(data) and data[at + 1] != 0xD9:
        end = at + 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        if data[at + 1] == 0xDA:
            while end + 1 < len(data) and not (
                data[end] == 0xFF and data[end + 1] != 0 and not 0xD0 <= data[end + 1] <= 0xD7
            ):
                end += 1
        found.append((at, end))
        at = end
    return found


def random_jpeg(rng):
    """A small JPEG (colour, grey or CMYK; baseline or progressive) with random marker edits:
    scans repeated (up to 200 times), dropped or all doubled, comments holding start-of-scan
    bytes, another size in the frame header, damage."""
    mode = rng.choice(["RGB", "L", "CMYK"])
    image = natural_image(rng, _log_uniform(rng, 150), _log_uniform(rng, 150))
    data = encode(image, mode=mode, progressive=bool(rng.random() < 0.6), quality=70)
    for _ in range(rng.integers(1, 4)):
        segments = _segments(data)
        scans = [(a, b) for a, b in segments if data[a + 1] == 0xDA]
        kind = rng.integers(0, 5)
        if kind == 0 and scans:
            a, b = scans[rng.integers(0, len(scans))]
            data = data[:b] + data[a:b] * _log_uniform(rng, 200) + data[b:]
        elif kind == 1 and len(scans) > 1:
            a, b = scans[rng.integers(0, len(scans))]
            data = data[:a] + data[b:]
        elif kind == 2 and scans:
            data = data[: scans[-1][1]] + data[scans[0][0] : scans[-1][1]] + data[scans[-1][1] :]
        elif kind == 3:
            text = b"\xff\xda" * int(rng.integers(1, 120))
            data = data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
        else:
            at = next(a for a, _ in segments if data[a + 1] in (0xC0, 0xC2))
            size = struct.pack(">HH", _log_uniform(rng, 30000), _log_uniform(rng, 30000))
            data = data[: at + 5] + size + data[at + 9 :]
    return _damaged(rng, data) if rng.random() < 0.2 else data


def _damaged(rng, data):
    data = bytearray(data)
    if rng.random() < 0.5:
        del data[int(rng.integers(2, len(data))) :]
    else:
        for at in rng.integers(0, len(data), int(rng.integers(1, 4))):
            data[at] = int(rng.integers(0, 256))
    return bytes(data)


CHILD_SETUP = """
import struct, time
import tensorflow as tf
from resnext_tf.data import decode
from resnext_tf.data.config import ImageLimits

limits = ImageLimits(**LIMITS)
spec = [tf.TensorSpec([], tf.string)]
check = tf.function(lambda d: decode.check_image(d, limits), input_signature=spec)
shape = tf.function(decode.image_shape, input_signature=spec)
decoded = tf.function(lambda d: tf.shape(decode.decode(d)), input_signature=spec)
items = [bytes(b) for b in np.load(PATH, allow_pickle=True)]
intact = np.load(PATH[:-4] + "-intact.npy")


def jpeg_markers(data):
    # libjpeg's reading, independently of decode.jpeg_scans: segments skipped by their length,
    # entropy-coded data to the next marker. (frame marker, components, scans, first scan's
    # components)
    at, sof, components, scans, first = 2, None, 0, 0, None
    while at + 4 <= len(data):
        if data[at] != 0xFF or data[at + 1] in (0x00, 0xFF) or 0xD0 <= data[at + 1] <= 0xD7:
            at += 1
            continue
        marker = data[at + 1]
        if marker == 0xD9:
            break
        end = at + 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and sof is None:
            sof, components = marker, data[at + 9] if at + 9 < len(data) else 0
        if marker == 0xDA:
            scans += 1
            first = data[at + 4] if first is None and at + 4 < len(data) else first
        at = end
    return sof, components, scans, first


def gif_frames(data):
    # The frames' largest width and height and their pixels, walking the blocks in Python.
    at = 13 + (3 << (data[10] % 8 + 1) if data[10] >= 128 else 0)
    widths, heights, pixels = [0], [0], 0
    while at + 10 < len(data) and data[at] in (0x21, 0x2C):
        if data[at] == 0x2C:
            width, height = struct.unpack("<HH", data[at + 5 : at + 9])
            widths.append(width), heights.append(height)
            pixels += width * height
            flags = data[at + 9]
            at += 11 + (3 << (flags % 8 + 1) if flags >= 128 else 0)
        else:
            at += 2
        while at < len(data) and data[at]:
            at += data[at] + 1
        at += 1
    return max(widths), max(heights), pixels


for data in items[:2]:  # the warm-up: tracing, the decoders' first use
    check(data), shape(data)
"""

CHILD_ACTION = """
report = {"accepted": 0, "refused": 0, "unreadable": 0, "violations": [], "slowest_s": 0.0}
for k, data in enumerate(items):
    start = time.time()
    try:
        reason = check(data).numpy().decode()
    except tf.errors.InvalidArgumentError:
        report["unreadable"] += 1
        continue
    except Exception as e:
        report["violations"].append([k, f"check_image raised {type(e).__name__}: {e}"[:300]])
        continue
    if reason:
        report["refused"] += 1
        report["slowest_s"] = max(report["slowest_s"], time.time() - start)
        continue
    report["accepted"] += 1
    problems = []
    if data[:3] == b"\\xff\\xd8\\xff":
        sof, components, scans, first = jpeg_markers(data)
        height, width = shape(data).numpy().tolist()
        if scans > decode.JPEG_MAX_SCANS:
            problems.append(f"{scans} scans")
        buffered = sof in (0xC2, 0xC6, 0xCA, 0xCE) or scans != 1 or (first or 0) < components
        if buffered and width * height * components > 3 * limits.max_pixels:
            problems.append(f"{width}x{height}x{components} coefficients, multi-scan")
    else:
        width, height, pixels = gif_frames(data)
        if pixels > limits.max_pixels:
            problems.append(f"frames of {pixels} pixels")
    try:
        out = decoded(data).numpy().tolist()
    except tf.errors.InvalidArgumentError:
        out = None  # damaged data the header check cannot see
    if out is not None:
        # A GIF that damage cuts short decodes to its first frames: never larger.
        h, w = out[:2]
        header = shape(data).numpy().tolist()
        larger = h > header[0] or w > header[1]
        if (intact[k] and [h, w] != header) or larger:
            problems.append(f"decoded {h}x{w}, header {header}")
        if header != [height, width]:
            problems.append(f"header {header}, walk {[height, width]}")
        if h * w > limits.max_pixels or max(h, w) > limits.max_aspect * min(h, w):
            problems.append(f"decoded {h}x{w}, over the limits")
    if problems:
        report["violations"].append([k, problems])
    report["slowest_s"] = max(report["slowest_s"], time.time() - start)
print("REPORT", json.dumps(report), file=sys.stderr)
"""


def test_seeded_fuzz_of_gif_and_jpeg_header_checks(tmp_path):
    rng = np.random.default_rng(2027)
    jpegs = [(random_jpeg(rng), True) for _ in range(ITEMS)]  # sized by the frame header
    items, intact = zip(*jpegs, *(random_gif(rng) for _ in range(ITEMS)), strict=True)
    path = str(tmp_path / "items.npy")
    np.save(path, np.array(items, dtype=object), allow_pickle=True)
    np.save(str(tmp_path / "items-intact.npy"), np.array(intact))
    setup = "import numpy as np\nLIMITS = " + repr(LIMITS) + "\nPATH = " + repr(path)
    growth, error, stderr = peak_growth(
        setup + CHILD_SETUP, CHILD_ACTION, package_init=False, timeout=300
    )
    assert not error, error
    (report,) = [json.loads(line[7:]) for line in stderr.splitlines() if line.startswith("REPORT ")]
    assert report["violations"] == [], report["violations"][:5]
    assert report["accepted"] > 50 and report["refused"] > 50, report
    assert report["slowest_s"] < SLOWEST_S, report
    assert growth < MEMORY_BOUND_MIB, f"+{growth:.0f} MiB"
