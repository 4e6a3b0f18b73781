/* Compiled decoders for moediag.checkpoint.dequant: one table lookup and one float32 multiply per
 * output, no format logic beyond the tables. The FP8 table is torch's own conversion of every byte
 * (passed in); the FP4 (e2m1) table holds its 16 exact values. Each result is the IEEE product of the
 * table value and the scale, which is what the references compute (torch's float8 cast times the
 * scale; transformers' ldexp for MXFP4), so the results are equal bit for bit. Built with the package
 * when a C compiler is present (setup.py, optional); without it dequant.py decodes with torch ops.
 *
 * The GIL is released while decoding, so readers in several threads decode at once. Every size and
 * index is checked before any byte is written.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* FP4 (e2m1) values by nibble, and both values of every byte: low nibble first */
static const float FP4[16] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                              -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
static float PAIRS[256][2];

/* 2**(s - 127) for an E8M0 byte s in 0..254 (0 gives the subnormal 2**-127) */
static float e8m0(unsigned s) {
    uint32_t bits = s ? (uint32_t)s << 23 : 0x00400000u;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void mxfp4_groups(const uint8_t *blocks, const uint8_t *scales, float *out, Py_ssize_t groups) {
    for (Py_ssize_t g = 0; g < groups; g++) {
        const uint8_t *b = blocks + 16 * g;
        float *o = out + 32 * g;
        float v[32];
        for (int j = 0; j < 16; j++) memcpy(v + 2 * j, PAIRS[b[j]], 2 * sizeof(float));
        unsigned s = scales[g];
        if (s < 255) {
            const float f = e8m0(s);
            for (int j = 0; j < 32; j++) o[j] = v[j] * f;
        } else { /* 2**128 is beyond float32: twice the value (exact), then 2**127, as ldexp rounds */
            const float f = e8m0(254);
            for (int j = 0; j < 32; j++) o[j] = (v[j] * 2.0f) * f;
        }
    }
}

static void fp8_rows(const uint8_t *w, const float *lut, const float *scale, const int64_t *scale_row,
                     Py_ssize_t scale_cols, Py_ssize_t block_cols, float *out, Py_ssize_t rows,
                     Py_ssize_t cols) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        const uint8_t *wr = w + r * cols;
        float *o = out + r * cols;
        const float *s = scale + scale_row[r] * scale_cols;
        for (Py_ssize_t c0 = 0, k = 0; c0 < cols; c0 += block_cols, k++) {
            const Py_ssize_t c1 = cols - c0 < block_cols ? cols : c0 + block_cols;
            const float f = s[k];
            for (Py_ssize_t c = c0; c < c1; c++) o[c] = lut[wr[c]] * f;
        }
    }
}

static void release(Py_buffer *views, int n) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&views[i]);
}

/* whether a buffer's address suits elements of `size` bytes (the loops read and write them directly) */
static int aligned(const Py_buffer *v, size_t size) { return ((uintptr_t)v->buf) % size == 0; }

/* mxfp4(blocks, scales, out): blocks uint8 [G * 16], scales uint8 [G], out float32 [G * 32] */
static PyObject *mxfp4(PyObject *self, PyObject *args) {
    Py_buffer v[3];
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*w*", &v[0], &v[1], &v[2])) return NULL;
    const Py_ssize_t groups = v[1].len;
    if (v[0].len != 16 * groups || v[2].len != 32 * groups * (Py_ssize_t)sizeof(float) ||
        !aligned(&v[2], sizeof(float))) {
        release(v, 3);
        PyErr_SetString(PyExc_ValueError, "mxfp4: blocks, scales and out sizes do not match (or out is misaligned)");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    mxfp4_groups(v[0].buf, v[1].buf, v[2].buf, groups);
    Py_END_ALLOW_THREADS
    release(v, 3);
    Py_RETURN_NONE;
}

/* fp8(codes, lut, scale, scale_row, scale_cols, block_cols, out): codes uint8 [rows * cols], lut float32
 * [256], scale float32 [scale_rows * scale_cols], scale_row int64 [rows] (the scale row of each row),
 * out float32 [rows * cols]; column c uses scale column c // block_cols. */
static PyObject *fp8(PyObject *self, PyObject *args) {
    Py_buffer v[5];
    Py_ssize_t scale_cols, block_cols;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnw*", &v[0], &v[1], &v[2], &v[3], &scale_cols, &block_cols,
                          &v[4]))
        return NULL;
    const Py_ssize_t rows = v[3].len / (Py_ssize_t)sizeof(int64_t);
    const Py_ssize_t n = v[0].len, cols = rows ? n / rows : 0;
    const Py_ssize_t scale_rows = scale_cols > 0 ? v[2].len / (Py_ssize_t)sizeof(float) / scale_cols : 0;
    int ok = v[1].len == 256 * (Py_ssize_t)sizeof(float) && v[3].len % (Py_ssize_t)sizeof(int64_t) == 0 &&
             cols * rows == n && v[4].len == n * (Py_ssize_t)sizeof(float) && block_cols > 0 &&
             scale_cols > 0 && v[2].len == scale_rows * scale_cols * (Py_ssize_t)sizeof(float) &&
             (cols == 0 || (cols - 1) / block_cols < scale_cols) && aligned(&v[1], sizeof(float)) &&
             aligned(&v[2], sizeof(float)) && aligned(&v[4], sizeof(float));
    /* the scale rows are copied and checked here, with the GIL held: the caller's buffer could change
     * while the decode runs without it */
    int64_t *sr = ok ? PyMem_Malloc((size_t)(rows ? rows : 1) * sizeof(int64_t)) : NULL;
    if (ok && sr == NULL) {
        release(v, 5);
        return PyErr_NoMemory();
    }
    if (ok) memcpy(sr, v[3].buf, (size_t)rows * sizeof(int64_t));
    for (Py_ssize_t r = 0; ok && r < rows; r++) ok = sr[r] >= 0 && sr[r] < scale_rows;
    if (!ok) {
        PyMem_Free(sr);
        release(v, 5);
        PyErr_SetString(PyExc_ValueError,
                        "fp8: codes, table, scales, scale rows and out do not match (or are misaligned)");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    fp8_rows(v[0].buf, v[1].buf, v[2].buf, sr, scale_cols, block_cols, v[4].buf, rows, cols);
    Py_END_ALLOW_THREADS
    PyMem_Free(sr);
    release(v, 5);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"mxfp4", mxfp4, METH_VARARGS, "Decode MXFP4 blocks and E8M0 scales into float32."},
    {"fp8", fp8, METH_VARARGS, "Decode FP8 codes through a table, times their block scales."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_decode", "Compiled MXFP4 and FP8 decoders.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__decode(void) {
    for (int i = 0; i < 256; i++) {
        PAIRS[i][0] = FP4[i & 15];
        PAIRS[i][1] = FP4[i >> 4];
    }
    return PyModule_Create(&module);
}
