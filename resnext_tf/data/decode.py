"""Encoded images: the header checked against `ImageLimits` before anything decodes them
(`check_image`), and the RGB decoders of training, serving and prediction (docs/data.md).
"""

import tensorflow as tf

from resnext_tf.data.config import ImageLimits

DEFAULT_LIMITS = ImageLimits()
# Formats read by `decode`, in the order TensorFlow's decoder tells them apart by their first
# bytes. JPEG XL, which TensorFlow also decodes, is refused: its header is not parsed here.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")
NOT_AN_IMAGE = f"is not a {', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]} image"
# libjpeg's accurate integer IDCT, as Torch's image.load and PIL decode (TF's default differs).
JPEG_DCT = "INTEGER_ACCURATE"
# GIF blocks walked to find the frames; a step skips up to GIF_RUN full data sub-blocks.
GIF_MAX_STEPS = 4096
GIF_RUN = 1024
# Start-of-scan markers a JPEG may hold: libjpeg passes over every 8x8 block of the image's
# components for each scan of a progressive JPEG, however few bytes the scan has, and its
# standard scripts write 10 scans (18 for CMYK).
JPEG_MAX_SCANS = 100
_HEAD = 32  # header bytes read for the dimensions


def _head(data):
    """The first _HEAD bytes of `data` as int64 [_HEAD], zero-padded."""
    head = tf.io.decode_raw(tf.strings.substr(data, 0, _HEAD), tf.uint8)
    return tf.pad(tf.cast(head, tf.int64), [[0, _HEAD - tf.size(head)]])


def image_format(data):
    """Index in IMAGE_FORMATS + 1 of the format of `data` by its first bytes; 0 for any other."""
    padded = tf.strings.join([tf.strings.substr(data, 0, 16), b"\0" * 16])

    def starts(offset, magic):
        return tf.equal(tf.strings.substr(padded, offset, len(magic)), magic)

    webp = starts(0, b"RIFF") & starts(8, b"WEBP") & (tf.strings.length(data) > 12)
    found = tf.stack(
        [starts(0, b"\xff\xd8\xff"), starts(0, b"\x89PNG\r\n\x1a\n"), starts(0, b"GIF8"),
         starts(0, b"BM"), webp]
    )  # fmt: skip
    first = tf.argmax(tf.cast(found, tf.int32), output_type=tf.int32)
    return tf.where(tf.reduce_any(found), first + 1, 0)


def _le(head, offset, count):
    """Unsigned little-endian integer of `count` bytes at `offset`."""
    return sum(head[offset + k] * 256**k for k in range(count))


def _be(head, offset, count):
    return sum(head[offset + k] * 256 ** (count - 1 - k) for k in range(count))


def _color_table_bytes(flags):
    """Bytes of the color table that a GIF flags byte announces."""
    flags = tf.maximum(flags, 0)
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0)


def _elongation(height, width):
    longer, shorter = tf.maximum(height, width), tf.minimum(height, width)
    ratio = tf.cast(longer, tf.float64) / tf.cast(tf.maximum(shorter, 1), tf.float64)
    return tf.where(shorter > 0, ratio, float("inf"))


def _gif_frames(data):
    """(pixels of all the frames of a GIF, the widest frame's width, the tallest frame's height,
    the most elongated of those sizes over the first frames as (height, width), whether its
    blocks were walked to the end).

    giflib allocates every frame before TensorFlow takes the first, and LZW packs a large
    frame in few bytes. TensorFlow's output is the widest width by the tallest height of the
    frames giflib reads, whatever the logical screen and the frames' offsets say: all of them,
    or, when damaged data stops giflib, the first ones. The walk stops at the trailer, at a
    byte that starts no block, at the end of the data, or after GIF_MAX_STEPS steps.
    """
    raw = tf.io.decode_raw(data, tf.uint8)
    n = tf.size(raw, out_type=tf.int64)

    def byte(i):
        i = tf.cast(i, tf.int64)
        value = tf.cast(tf.gather(raw, tf.clip_by_value(i, 0, n - 1)), tf.int64)
        return tf.where((i >= 0) & (i < n), value, -1)

    def sub_blocks(pos, frames):
        at = pos + 256 * tf.range(GIF_RUN, dtype=tf.int64)
        full = tf.equal(byte(at), 255)
        run = tf.reduce_sum(tf.math.cumprod(tf.cast(full, tf.int64)))
        pos = pos + 256 * run
        size = byte(pos)
        more = (run == GIF_RUN) | (size > 0)
        next_pos = tf.where(run == GIF_RUN, pos, pos + tf.maximum(size, 0) + 1)
        return next_pos, more, frames, size < 0

    def block(pos, frames):
        kind = byte(pos)
        image, extension = tf.equal(kind, 0x2C), tf.equal(kind, 0x21)
        width = tf.maximum(byte(pos + 5), 0) + 256 * tf.maximum(byte(pos + 6), 0)
        height = tf.maximum(byte(pos + 7), 0) + 256 * tf.maximum(byte(pos + 8), 0)
        # Image: descriptor, colour table, LZW code size; extension: introducer and label.
        next_pos = tf.where(image, pos + 11 + _color_table_bytes(byte(pos + 9)), pos + 2)
        pixels, max_width, max_height, narrowest = frames
        max_width = tf.where(image, tf.maximum(max_width, width), max_width)
        max_height = tf.where(image, tf.maximum(max_height, height), max_height)
        size = tf.stack([max_height, max_width])
        longer = _elongation(max_height, max_width) > _elongation(narrowest[0], narrowest[1])
        narrowest = tf.where(image & (longer | (narrowest[0] < 0)), size, narrowest)
        pixels += tf.where(image, width * height, 0)
        return (
            next_pos,
            image | extension,
            (pixels, max_width, max_height, narrowest),
            ~(image | extension),
        )

    def step(pos, in_sub_blocks, frames, steps, done):
        pos, in_sub_blocks, frames, done = tf.cond(
            in_sub_blocks, lambda: sub_blocks(pos, frames), lambda: block(pos, frames)
        )
        return pos, in_sub_blocks, frames, steps + 1, done

    start = 13 + _color_table_bytes(byte(10))
    zero = tf.constant(0, tf.int64)
    frames = (zero, zero, zero, -tf.ones([2], tf.int64))  # no frame yet
    _, _, (pixels, width, height, narrowest), _, done = tf.while_loop(
        lambda pos, in_sub_blocks, frames, steps, done: ~done & (steps < GIF_MAX_STEPS),
        step,
        (start, tf.constant(False), frames, zero, tf.constant(False)),
    )
    narrowest = tf.where(narrowest < 0, tf.stack([height, width]), narrowest)
    return pixels, width, height, narrowest, done


def jpeg_scans(data):
    """(scans, components, buffered) of a JPEG, from its bytes.

    scans counts the start-of-scan markers (0xFFDA) anywhere in the data, up to one past
    JPEG_MAX_SCANS: at least the scans libjpeg decodes, as entropy-coded data cannot hold a
    marker. buffered is True when libjpeg may hold the coefficients of the whole image (2 bytes
    each, 64 per 8x8 block of each component): a progressive frame marker (SOF2, SOF10) before
    the first scan, another number of scans than one, or a first scan of fewer components than
    the frame's.

    Raises:
        InvalidArgumentError: a JPEG whose header libjpeg cannot read.
    """

    def split(text, marker, maxsplit):  # the pieces between the markers, flat (fast)
        return tf.strings.split(tf.reshape(text, [1]), marker, maxsplit=maxsplit).flat_values

    # At most JPEG_MAX_SCANS + 2 pieces: a bounded search.
    pieces = split(data, b"\xff\xda", JPEG_MAX_SCANS + 1)
    scans = tf.size(pieces) - 1
    # libjpeg reads the frame header before the first scan.
    progressive = [tf.size(split(pieces[0], m, 1)) > 1 for m in (b"\xff\xc2", b"\xff\xca")]
    # The first scan's header after its marker: length (2 bytes), number of components.
    first = pieces[tf.minimum(scans, 1)]
    in_scan = tf.strings.substr(first, tf.minimum(2, tf.strings.length(first)), 1)
    in_scan = tf.cast(tf.reduce_sum(tf.io.decode_raw(in_scan, tf.uint8)), tf.int32)
    components = tf.io.extract_jpeg_shape(data)[2]
    buffered = progressive[0] | progressive[1] | tf.not_equal(scans, 1)
    return scans, components, buffered | (in_scan < components)


def image_header(data):
    """Reads the size of an encoded image from its header, without decoding it.

    Returns:
        (format, height, width, frame_pixels, walked, narrowest): `image_format`'s int32, the
        int64 size `decode` outputs (0 for an unknown format; a GIF's from its frames), the
        float64 pixels decoded at once (a GIF's frames together), False when a GIF's blocks
        were not walked to the end, and the most elongated size `decode` may output as int64
        (height, width): the size itself, or for a GIF that damage cuts short the size of its
        first frames (never more pixels).

    Raises:
        InvalidArgumentError: a JPEG whose header libjpeg cannot read.
    """
    fmt = image_format(data)
    head = _head(data)

    def dims(height, width):
        height, width = tf.cast(height, tf.int64), tf.cast(width, tf.int64)
        pixels = tf.cast(height, tf.float64) * tf.cast(width, tf.float64)
        return height, width, pixels, tf.constant(True), tf.stack([height, width])

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)
        return dims(shape[0], shape[1])

    def png():  # IHDR: big-endian width, height
        return dims(_be(head, 20, 4), _be(head, 16, 4))

    def gif():  # the frames' largest width and height, not the logical screen's
        pixels, width, height, narrowest, walked = _gif_frames(data)
        return height, width, tf.cast(pixels, tf.float64), walked, narrowest

    def bmp():  # BITMAPINFOHEADER: signed little-endian width, height (negative: top-down)
        def signed(value):
            return tf.where(value >= 2**31, value - 2**32, value)

        return dims(tf.abs(signed(_le(head, 22, 4))), signed(_le(head, 18, 4)))

    def webp():  # the first chunk: lossy VP8, lossless VP8L or extended VP8X
        chunk = _be(head, 12, 4)
        bits = _le(head, 21, 4)
        lossless = (bits // 2**14 % 2**14 + 1, bits % 2**14 + 1)
        lossy = (_le(head, 28, 2) % 2**14, _le(head, 26, 2) % 2**14)
        extended = (_le(head, 27, 3) + 1, _le(head, 24, 3) + 1)
        sizes = {0x56503820: lossy, 0x5650384C: lossless, 0x56503858: extended}
        height, width = tf.constant(0, tf.int64), tf.constant(0, tf.int64)
        for code, (h, w) in sizes.items():
            height, width = tf.where(chunk == code, h, height), tf.where(chunk == code, w, width)
        return dims(height, width)

    def unknown():
        return dims(0, 0)

    height, width, pixels, walked, narrowest = tf.switch_case(
        fmt, [unknown, jpeg, png, gif, bmp, webp]
    )
    return fmt, height, width, pixels, walked, narrowest


def _formatted(number):
    return f"{number:g}" if isinstance(number, float) else str(number)


def check_image(data, limits=DEFAULT_LIMITS):
    """Why an encoded image is refused before decoding, or "" when it is accepted.

    Reads only the length and the header (and a GIF's blocks, a JPEG's markers).

    Raises:
        InvalidArgumentError: a JPEG whose header libjpeg cannot read.
    """
    length = tf.strings.length(data)
    max_pixels, max_aspect = _formatted(limits.max_pixels), _formatted(limits.max_aspect)

    def header_reason():
        fmt, height, width, frame_pixels, walked, narrowest = image_header(data)
        longer = tf.cast(tf.maximum(height, width), tf.float64)
        shorter = tf.cast(tf.minimum(height, width), tf.float64)
        narrow_longer = tf.cast(tf.reduce_max(narrowest), tf.float64)
        narrow_shorter = tf.cast(tf.reduce_min(narrowest), tf.float64)
        scans, components, buffered = tf.cond(
            tf.equal(fmt, 1), lambda: jpeg_scans(data), lambda: (0, 0, False)
        )
        failed = [
            tf.equal(fmt, 0),
            ~walked,
            shorter < 1,
            longer * shorter > limits.max_pixels,
            longer > limits.max_aspect * shorter,
            narrow_longer > limits.max_aspect * narrow_shorter,
            frame_pixels > limits.max_pixels,
            scans > JPEG_MAX_SCANS,
            buffered & (longer * shorter * tf.cast(components, tf.float64) > 3 * limits.max_pixels),
        ]

        def describe():  # the strings are built only for a refused image
            size = tf.strings.join([tf.strings.as_string(width), "x", tf.strings.as_string(height)])
            messages = [
                tf.constant(NOT_AN_IMAGE),
                tf.constant(f"GIF has more than {GIF_MAX_STEPS} blocks"),
                tf.strings.join(["has no pixels (", size, " in its header)"]),
                tf.strings.join([size, f" pixels exceed the pixel limit {max_pixels}"]),
                tf.strings.join([size, f" pixels exceed the aspect-ratio limit {max_aspect}"]),
                tf.strings.join(
                    [
                        "the first frames of the GIF are ",
                        tf.strings.as_string(narrowest[1]),
                        "x",
                        tf.strings.as_string(narrowest[0]),
                        f" pixels, over the aspect-ratio limit {max_aspect} (what a damaged GIF "
                        "decodes to)",
                    ]
                ),
                tf.strings.join(
                    [
                        "GIF frames hold ",
                        tf.strings.as_string(tf.cast(frame_pixels, tf.int64)),
                        f" pixels in all, over the pixel limit {max_pixels}",
                    ]
                ),
                tf.constant(f"JPEG has more than {JPEG_MAX_SCANS} scans"),
                tf.strings.join(
                    [
                        size,
                        " pixels x ",
                        tf.strings.as_string(components),
                        f" components exceed 3 x the pixel limit {max_pixels} in a multi-scan "
                        "JPEG (libjpeg holds them all)",
                    ]
                ),
            ]
            first = tf.argmax(tf.cast(tf.stack(failed), tf.int32))
            return tf.gather(tf.stack(messages), first)

        return tf.cond(tf.reduce_any(tf.stack(failed)), describe, lambda: tf.constant(""))

    return tf.cond(
        tf.equal(length, 0),
        lambda: tf.constant("is empty (0 bytes)"),
        lambda: tf.cond(
            length > limits.max_bytes,
            lambda: tf.strings.join(
                [tf.strings.as_string(length), f" bytes exceed the size limit {limits.max_bytes}"]
            ),
            header_reason,
        ),
    )


def checked(data, limits=DEFAULT_LIMITS):
    """`data`, once `check_image` accepts it; raises InvalidArgumentError with the reason."""
    reason = check_image(data, limits)
    with tf.control_dependencies([tf.debugging.Assert(tf.equal(reason, ""), [reason])]):
        return tf.identity(data)


def image_shape(data):
    """Returns the (height, width) of an encoded image as int32 [2], read from its header."""
    _, height, width, _, _, _ = image_header(data)
    return tf.cast(tf.stack([height, width]), tf.int32)


def decode(data):
    """Decodes a JPEG (grey and CMYK included), PNG, GIF, BMP or WebP to uint8 [H, W, 3]."""
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method=JPEG_DCT),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )


def decode_window(data, y, x, h, w, fused):
    """Decodes the window [y:y+h, x:x+w] of an encoded image.

    With `fused`, JPEGs decode only the window; other formats decode fully and are cropped.
    """

    def crop_full():
        return decode(data)[y : y + h, x : x + w]

    if not fused:
        return crop_full()
    return tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.image.decode_and_crop_jpeg(
            data, tf.stack([y, x, h, w]), channels=3, dct_method=JPEG_DCT
        ),
        crop_full,
    )
