"""numba kernels behind :mod:`cellflow_rt.io.outlines`: OpenCV's outer-border following, per label.

Cellpose gets outlines from ``cv2.findContours(mask == label, RETR_EXTERNAL, CHAIN_APPROX_NONE)``
one label at a time. We follow the same border-following rule (Suzuki & Abe 1985 as OpenCV codes
it: 8-connected objects, start at the first pixel in raster order, search the neighbours
counter-clockwise from the direction just arrived from) so the points and their order are the same,
but for all labels in one pass over their bounding boxes.

Each label is copied into a small buffer, its bounding box plus a one-pixel frame:
``OUT`` marks background that can reach the frame (4-connected: the outside of the 8-connected
objects), ``INSIDE`` other non-label pixels (holes), ``LABEL`` label pixels not yet on a traced
border and ``TRACED`` label pixels on a traced outer border. Only objects whose first pixel touches
the outside start a border (RETR_EXTERNAL: objects inside a hole of the label are skipped).
"""
import numba
import numpy as np

from .._numba import NUMBA_OPTS

INSIDE, LABEL, OUT, TRACED = 0, 1, 2, 3

# OpenCV's chain-code directions: 0 = +x, then counter-clockwise on screen (y grows downwards)
_DY = np.array([0, -1, -1, -1, 0, 1, 1, 1], np.int64)
_DX = np.array([1, 1, 0, -1, -1, -1, 0, 1], np.int64)


@numba.njit(**NUMBA_OPTS)
def bounding_boxes(values, table, n):
    """(n + 1, 4) int64 [ymin, ymax, xmin, xmax] per compact index (row 0 unused; ymin > ymax if absent)."""
    box = np.empty((n + 1, 4), np.int64)
    box[:, 0] = values.shape[0]
    box[:, 1] = -1
    box[:, 2] = values.shape[1]
    box[:, 3] = -1
    for y in range(values.shape[0]):
        for x in range(values.shape[1]):
            k = table[values[y, x]]
            if k:
                if y < box[k, 0]:
                    box[k, 0] = y
                if y > box[k, 1]:
                    box[k, 1] = y
                if x < box[k, 2]:
                    box[k, 2] = x
                if x > box[k, 3]:
                    box[k, 3] = x
    return box


@numba.njit(**NUMBA_OPTS)
def _label_buffer(values, table, k, box):
    """Bounding box of label k plus a one-pixel frame, with the outside flood-filled."""
    y0, y1, x0, x1 = box[k, 0], box[k, 1], box[k, 2], box[k, 3]
    h, w = y1 - y0 + 3, x1 - x0 + 3
    buf = np.zeros((h, w), np.uint8)
    for y in range(y0, y1 + 1):
        for x in range(x0, x1 + 1):
            if table[values[y, x]] == k:
                buf[y - y0 + 1, x - x0 + 1] = LABEL
    # 4-connected flood fill of the background from the frame (the frame is one connected ring)
    stack = np.empty(h * w, np.int64)
    buf[0, 0] = OUT
    stack[0] = 0
    top = 1
    while top:
        top -= 1
        y, x = divmod(stack[top], w)
        for d in range(4):
            yy = y + (1 if d == 0 else -1 if d == 1 else 0)
            xx = x + (1 if d == 2 else -1 if d == 3 else 0)
            if 0 <= yy < h and 0 <= xx < w and buf[yy, xx] == INSIDE:
                buf[yy, xx] = OUT
                stack[top] = yy * w + xx
                top += 1
    return buf


@numba.njit(**NUMBA_OPTS)
def _trace(buf, y0, x0, out, n_out):
    """Follow the outer border starting at (y0, x0); mark its pixels TRACED.

    Writes the first ``n_out`` points (x, y in buffer coordinates) into ``out`` and returns the number
    of points of the border (pixels are repeated where the border passes them twice).
    """
    # first label neighbour clockwise from the left (OpenCV starts at direction 4, steps down)
    s = 4
    found = False
    for _ in range(7):
        s = (s - 1) & 7
        v = buf[y0 + _DY[s], x0 + _DX[s]]
        if v == LABEL or v == TRACED:
            found = True
            break
    buf[y0, x0] = TRACED
    if not found:
        if n_out > 0:
            out[0, 0] = x0
            out[0, 1] = y0
        return 1
    y1, x1 = y0 + _DY[s], x0 + _DX[s]
    y3, x3 = y0, x0
    n = 0
    while True:
        # next label neighbour counter-clockwise after the direction we came from
        for _ in range(8):
            s = (s + 1) & 7
            v = buf[y3 + _DY[s], x3 + _DX[s]]
            if v == LABEL or v == TRACED:
                break
        y4, x4 = y3 + _DY[s], x3 + _DX[s]
        buf[y3, x3] = TRACED
        if n < n_out:
            out[n, 0] = x3
            out[n, 1] = y3
        n += 1
        if y4 == y0 and x4 == x0 and y3 == y1 and x3 == x1:
            return n
        y3, x3 = y4, x4
        s = (s + 4) & 7


@numba.njit(parallel=True, **NUMBA_OPTS)
def outline_image(values, table, n, box, outlines):
    """Set ``outlines`` True on every pixel of every outer border of every label (2D)."""
    empty = np.zeros((0, 2), np.int64)
    for k in numba.prange(1, n + 1):
        if box[k, 1] < 0:
            continue
        buf = _label_buffer(values, table, k, box)
        h, w = buf.shape
        for y in range(1, h - 1):
            for x in range(1, w - 1):
                if buf[y, x] == LABEL and buf[y, x - 1] == OUT:
                    _trace(buf, y, x, empty, 0)
        for y in range(1, h - 1):
            for x in range(1, w - 1):
                if buf[y, x] == TRACED:
                    outlines[box[k, 0] + y - 1, box[k, 2] + x - 1] = True


@numba.njit(parallel=True, **NUMBA_OPTS)
def longest_borders(values, table, n, box):
    """Per label: start (y, x, buffer coordinates) and length of its longest outer border.

    Ties go to the object found last in raster order: OpenCV lists contours last-found first and
    Cellpose takes the first longest of that list.
    """
    start = np.zeros((n + 1, 2), np.int64)
    length = np.zeros(n + 1, np.int64)
    empty = np.zeros((0, 2), np.int64)
    for k in numba.prange(1, n + 1):
        if box[k, 1] < 0:
            continue
        buf = _label_buffer(values, table, k, box)
        h, w = buf.shape
        for y in range(1, h - 1):
            for x in range(1, w - 1):
                if buf[y, x] == LABEL and buf[y, x - 1] == OUT:
                    m = _trace(buf, y, x, empty, 0)
                    if m >= length[k]:
                        length[k] = m
                        start[k, 0] = y
                        start[k, 1] = x
    return start, length


@numba.njit(parallel=True, **NUMBA_OPTS)
def write_borders(values, table, n, box, start, length, offsets, coords):
    """Write the border of each label k with ``length[k] > 0`` into ``coords[offsets[k]:]`` as image (x, y)."""
    for k in numba.prange(1, n + 1):
        m = length[k]
        if m == 0:
            continue
        buf = _label_buffer(values, table, k, box)
        seg = coords[offsets[k]:offsets[k] + m]
        _trace(buf, start[k, 0], start[k, 1], seg, m)
        for i in range(m):
            seg[i, 0] += box[k, 2] - 1
            seg[i, 1] += box[k, 0] - 1
