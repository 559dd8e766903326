/* load.cc -- the model file (.tkt): reading, verifying and writing FlatBuffers, and parsing
 * JSON architecture files, behind the C API declared in compiler/model.h.
 *
 * This is the one C++ file of the project: it holds the FlatBuffers generated accessors, the
 * Verifier, the builder and the JSON parser.  Everything it hands out is plain C (tk_model).
 *
 * Reading trusts nothing (schema/ticket.fbs, "Layout and versioning"):
 *   1. size bounds and the file identifier "TKT1", then format_version <= 1;
 *   2. the FlatBuffers Verifier over the whole buffer (when it fails, a second pass walks the
 *      tables one field at a time to name the damaged part);
 *   3. semantic checks while converting: names, shapes and their bounds, data / mask / scores
 *      lengths, mask bits past the end, finite values, layer attribute arrays of exactly two,
 *      input normalisation, provenance, training state (momenta by tensor name);
 *   4. tk_model_infer() for shapes and graph invariants.
 * Every error is one line that starts with the file name (`what`) and names the tensor or
 * layer and the field.
 *
 * Writing stores every scalar explicitly (ForceDefaults), every layer attribute array and all
 * tensor data, so a save/load round trip is bit-exact and saving a loaded model again gives
 * the same bytes.
 */
#include <cerrno>
#include <cinttypes>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

extern "C" {
#include "model.h"
}

#include "flatbuffers/idl.h"
#include "ticket_generated.h"

namespace fb = ticket::fb;
using flatbuffers::String;
using flatbuffers::Table;
using flatbuffers::Vector;
using flatbuffers::Verifier;

namespace {

/* The largest buffer FlatBuffers can address (32-bit offsets): 2 GiB - 2. */
constexpr size_t kMaxFileBytes = FLATBUFFERS_MAX_BUFFER_SIZE - 1;
/* Elements of all tensors a file leaves without data (architecture files; `ticket init`
 * fills them).  Tensors with data are bounded by the file size; these would not be, so a
 * tiny hostile file could otherwise ask for gigabytes.  2^28 floats (1 GiB) is twice VGG-16
 * for ImageNet. */
constexpr int64_t kMaxDatalessElems = int64_t(1) << 28;
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kMaxJsonBytes = size_t(1) << 30;

const char *nz(const char *what) { return what && *what ? what : "model"; }

/* Record "what: <message>" and return st. */
__attribute__((format(printf, 3, 4))) tk_status bad(tk_status st, const char *what, const char *fmt, ...) {
  char msg[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return tk_fail(st, "%s: %s", nz(what), msg);
}

/* Checks a string from the file; returns NULL when fine, else why not.  Names (tensors,
 * layers, arch, metrics) are printed in messages and tables, so they must be short and
 * free of control characters; free text (notes, config, log) only must not hide a NUL. */
const char *check_string(const String *s, bool is_name, bool may_be_empty) {
  if (!s) return nullptr;
  const char *p = s->c_str();
  size_t n = s->size();
  if (memchr(p, 0, n)) return "contains a NUL byte";
  if (!is_name) return nullptr;
  if (n == 0 && !may_be_empty) return "is empty";
  if (n > TK_MAX_NAME) return "is longer than 256 bytes";
  for (size_t i = 0; i < n; i++)
    if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f) return "contains a control character";
  return nullptr;
}

char *dup_or_null(const String *s) { return s ? tk_strdup(s->c_str()) : nullptr; }

/* Copies n floats out of a FlatBuffers vector (little-endian in the file). */
void copy_floats(float *dst, const Vector<float> *v, size_t n) {
#if FLATBUFFERS_LITTLEENDIAN
  if (n) memcpy(dst, v->Data(), n * sizeof(float));
#else
  for (size_t i = 0; i < n; i++) dst[i] = v->Get((flatbuffers::uoffset_t)i);
#endif
}

/* Element i of a vector of 8-byte scalars.  The Verifier (2.0.8) checks vectors for 4-byte
 * alignment only, so a hostile file can misalign them: read with memcpy. */
template <class T> T get8(const Vector<T> *v, size_t i) {
  static_assert(sizeof(T) == 8, "8-byte elements");
  T x;
  memcpy(&x, reinterpret_cast<const uint8_t *>(v->Data()) + 8 * i, 8);
  return flatbuffers::EndianScalar(x);
}

/* Index of the first non-finite float, or -1.  Scans blocks without branching so the
 * common, clean case runs at memory speed. */
int64_t first_nonfinite(const float *x, int64_t n) {
  const int64_t B = 4096;
  for (int64_t b = 0; b < n; b += B) {
    int64_t e = b + B < n ? b + B : n;
    uint32_t any = 0;
    for (int64_t i = b; i < e; i++) {
      uint32_t u;
      memcpy(&u, &x[i], 4);
      any |= (u & 0x7f800000u) == 0x7f800000u;
    }
    if (any)
      for (int64_t i = b; i < e; i++)
        if (!std::isfinite(x[i])) return i;
  }
  return -1;
}

/* ---- locating verifier failures ---------------------------------------------------------- */

/* The Verifier only says yes or no.  When it says no, this walks the same tables field by
 * field, in the order the generated Verify() does, and reports the first field that does not
 * verify ("tensors[3] (conv1.weight): data").  It dereferences only what it has verified. */
enum Kind { kScalar, kString, kVector, kTables, kTable };
struct Desc;
struct Field {
  flatbuffers::voffset_t vt;
  Kind kind;
  size_t size; /* scalar size or vector element size */
  const char *name;
  const Desc *sub;
  bool required;
};
struct Desc {
  const Field *fields;
  size_t n;
};

#define VT(T, F) fb::T::VT_##F
const Field kMetricF[] = {{VT(Metric, NAME), kString, 1, "name", nullptr, false},
                          {VT(Metric, VALUE), kScalar, 8, "value", nullptr, false}};
const Desc kMetric = {kMetricF, 2};
const Field kTensorF[] = {
    {VT(Tensor, NAME), kString, 1, "name", nullptr, true},
    {VT(Tensor, SHAPE), kVector, 8, "shape", nullptr, false},
    {VT(Tensor, DATA), kVector, 4, "data", nullptr, false},
    {VT(Tensor, MASK), kVector, 1, "mask", nullptr, false},
    {VT(Tensor, SCORES), kVector, 4, "scores", nullptr, false},
    {VT(Tensor, INIT), kScalar, 1, "init", nullptr, false},
    {VT(Tensor, INIT_FAN_IN), kScalar, 8, "init_fan_in", nullptr, false},
    {VT(Tensor, PRUNABLE), kScalar, 1, "prunable", nullptr, false},
    {VT(Tensor, TRAINABLE), kScalar, 1, "trainable", nullptr, false}};
const Desc kTensor = {kTensorF, sizeof kTensorF / sizeof *kTensorF};
const Field kLayerF[] = {
    {VT(Layer, NAME), kString, 1, "name", nullptr, false},
    {VT(Layer, OP), kScalar, 1, "op", nullptr, false},
    {VT(Layer, INPUTS), kVector, 4, "inputs", nullptr, false},
    {VT(Layer, WEIGHT), kScalar, 4, "weight", nullptr, false},
    {VT(Layer, BIAS), kScalar, 4, "bias", nullptr, false},
    {VT(Layer, RUNNING_MEAN), kScalar, 4, "running_mean", nullptr, false},
    {VT(Layer, RUNNING_VAR), kScalar, 4, "running_var", nullptr, false},
    {VT(Layer, KERNEL), kVector, 4, "kernel", nullptr, false},
    {VT(Layer, STRIDE), kVector, 4, "stride", nullptr, false},
    {VT(Layer, PADDING), kVector, 4, "padding", nullptr, false},
    {VT(Layer, DILATION), kVector, 4, "dilation", nullptr, false},
    {VT(Layer, GROUPS), kScalar, 4, "groups", nullptr, false},
    {VT(Layer, EPS), kScalar, 4, "eps", nullptr, false},
    {VT(Layer, MOMENTUM), kScalar, 4, "momentum", nullptr, false},
    {VT(Layer, OUT_FEATURES), kScalar, 4, "out_features", nullptr, false}};
const Desc kLayer = {kLayerF, sizeof kLayerF / sizeof *kLayerF};
const Field kInputF[] = {
    {VT(InputSpec, CHANNELS), kScalar, 4, "channels", nullptr, false},
    {VT(InputSpec, HEIGHT), kScalar, 4, "height", nullptr, false},
    {VT(InputSpec, WIDTH), kScalar, 4, "width", nullptr, false},
    {VT(InputSpec, MEAN), kVector, 4, "mean", nullptr, false},
    {VT(InputSpec, STD), kVector, 4, "std", nullptr, false},
    {VT(InputSpec, MIN), kScalar, 4, "min", nullptr, false},
    {VT(InputSpec, MAX), kScalar, 4, "max", nullptr, false}};
const Desc kInput = {kInputF, sizeof kInputF / sizeof *kInputF};
const Field kProvF[] = {
    {VT(Provenance, METHOD), kString, 1, "method", nullptr, false},
    {VT(Provenance, SPARSITY), kScalar, 8, "sparsity", nullptr, false},
    {VT(Provenance, SOURCE), kString, 1, "source", nullptr, false},
    {VT(Provenance, CREATED), kString, 1, "created", nullptr, false},
    {VT(Provenance, METRICS), kTables, 4, "metrics", &kMetric, false},
    {VT(Provenance, NOTES), kString, 1, "notes", nullptr, false}};
const Desc kProv = {kProvF, sizeof kProvF / sizeof *kProvF};
const Field kTrainF[] = {
    {VT(TrainState, EPOCH), kScalar, 4, "epoch", nullptr, false},
    {VT(TrainState, STEP), kScalar, 8, "step", nullptr, false},
    {VT(TrainState, RNG), kVector, 8, "rng", nullptr, false},
    {VT(TrainState, MOMENTA), kTables, 4, "momenta", &kTensor, false},
    {VT(TrainState, CONFIG), kString, 1, "config", nullptr, false},
    {VT(TrainState, LOG), kString, 1, "log", nullptr, false},
    {VT(TrainState, BEST), kTables, 4, "best", &kMetric, false}};
const Desc kTrain = {kTrainF, sizeof kTrainF / sizeof *kTrainF};
const Field kModelF[] = {
    {VT(Model, FORMAT_VERSION), kScalar, 4, "format_version", nullptr, false},
    {VT(Model, ARCH), kString, 1, "arch", nullptr, false},
    {VT(Model, CLASSES), kScalar, 4, "classes", nullptr, false},
    {VT(Model, INPUT), kTable, 0, "input", &kInput, true},
    {VT(Model, TENSORS), kTables, 4, "tensors", &kTensor, false},
    {VT(Model, LAYERS), kTables, 4, "layers", &kLayer, false},
    {VT(Model, PROVENANCE), kTable, 0, "provenance", &kProv, false},
    {VT(Model, TRAIN_STATE), kTable, 0, "train_state", &kTrain, false}};
const Desc kModel = {kModelF, sizeof kModelF / sizeof *kModelF};
#undef VT

bool verify_scalar(Verifier &v, const Table *t, flatbuffers::voffset_t vt, size_t size) {
  switch (size) {
  case 1: return t->VerifyField<uint8_t>(v, vt, 1);
  case 4: return t->VerifyField<uint32_t>(v, vt, 4);
  default: return t->VerifyField<uint64_t>(v, vt, 8);
  }
}

/* Returns true when the table verifies; otherwise appends the path of the damaged part. */
bool locate(Verifier &v, const Table *t, const Desc &d, std::string &path) {
  if (!t->VerifyTableStart(v)) {
    path += ": table header";
    return false;
  }
  const String *label = nullptr; /* a verified name, for messages */
  for (size_t k = 0; k < d.n; k++) {
    const Field &f = d.fields[k];
    bool ok = true;
    if (f.kind == kScalar) {
      ok = verify_scalar(v, t, f.vt, f.size);
    } else {
      ok = f.required ? t->VerifyOffsetRequired(v, f.vt) : t->VerifyOffset(v, f.vt);
      const uint8_t *p = ok ? t->GetPointer<const uint8_t *>(f.vt) : nullptr;
      if (ok && p) {
        switch (f.kind) {
        case kString:
          ok = v.VerifyString(reinterpret_cast<const String *>(p));
          if (ok && !strcmp(f.name, "name")) label = reinterpret_cast<const String *>(p);
          break;
        case kVector: ok = v.VerifyVectorOrString(p, f.size); break;
        case kTable: {
          std::string sub = std::string(": ") + f.name;
          if (!locate(v, reinterpret_cast<const Table *>(p), *f.sub, sub)) {
            path += sub;
            return false;
          }
          break;
        }
        case kTables: {
          if (!(ok = v.VerifyVectorOrString(p, 4))) break;
          auto vec = reinterpret_cast<const Vector<flatbuffers::Offset<Table>> *>(p);
          for (flatbuffers::uoffset_t i = 0; i < vec->size(); i++) {
            std::string sub = std::string(": ") + f.name + "[" + std::to_string(i) + "]";
            if (!locate(v, vec->Get(i), *f.sub, sub)) {
              path += sub;
              return false;
            }
          }
          break;
        }
        case kScalar: break;
        }
      }
    }
    if (!ok) {
      if (label && !check_string(label, true, false)) path += std::string(" (") + label->c_str() + ")";
      path += std::string(": ") + f.name;
      return false;
    }
  }
  v.EndTable();
  return true;
}

Verifier::Options verifier_options() {
  Verifier::Options o;
  o.max_depth = 16;       /* the schema nests at most 4 deep */
  o.max_tables = 1 << 20; /* tensors + layers + metrics, with a wide margin */
  return o;
}

tk_status verify_failed(const uint8_t *buf, size_t n, const char *what) {
  Verifier v(buf, n, verifier_options());
  std::string path;
  flatbuffers::uoffset_t o = v.VerifyOffset(0);
  if (!o) path = "root offset";
  else if (locate(v, reinterpret_cast<const Table *>(buf + o), kModel, path)) path.clear();
  if (path.empty())
    return bad(TK_ERR_FORMAT, what, "damaged file: FlatBuffers verification failed (%zu bytes)", n);
  if (path.compare(0, 2, ": ") == 0) path.erase(0, 2);
  return bad(TK_ERR_FORMAT, what, "damaged file: %s does not verify (truncated or corrupt)", path.c_str());
}

/* ---- reading ------------------------------------------------------------------------------ */

using model_ptr = std::unique_ptr<tk_model, decltype(&tk_model_free)>;

const char *kind_of_float(float x) { return std::isnan(x) ? "NaN" : "infinite"; }

tk_status read_tensor(tk_model *m, const fb::Tensor *ft, int idx, const char *what, int64_t *dataless) {
  if (const char *why = check_string(ft->name(), true, false))
    return bad(TK_ERR_FORMAT, what, "tensor %d: name %s", idx, why);
  const char *name = ft->name()->c_str();
  auto sh = ft->shape();
  if (!sh || sh->size() == 0) return bad(TK_ERR_FORMAT, what, "tensor %s: shape: missing", name);
  if (sh->size() > 4)
    return bad(TK_ERR_FORMAT, what, "tensor %s: shape: %u dimensions, at most 4 allowed", name, sh->size());
  int ndim = (int)sh->size();
  int64_t dims[4], numel = 1;
  for (int d = 0; d < ndim; d++) {
    dims[d] = get8(sh, (size_t)d);
    if (dims[d] < 1 || dims[d] > TK_MAX_DIM)
      return bad(TK_ERR_FORMAT, what, "tensor %s: shape[%d] = %" PRId64 " out of range 1..%d", name, d, dims[d],
                 TK_MAX_DIM);
    numel *= dims[d];
    if (numel > TK_MAX_TENSOR_ELEMS)
      return bad(TK_ERR_FORMAT, what, "tensor %s: shape: more than %lld elements", name,
                 (long long)TK_MAX_TENSOR_ELEMS);
  }
  int init = (int)ft->init();
  if (init < 0 || init >= TK_INIT_COUNT)
    return bad(TK_ERR_FORMAT, what, "tensor %s: init: unknown rule %d", name, init);
  if (ft->init_fan_in() < 0 || ft->init_fan_in() > TK_MAX_TENSOR_ELEMS)
    return bad(TK_ERR_FORMAT, what, "tensor %s: init_fan_in: %" PRId64 " out of range", name, ft->init_fan_in());
  auto data = ft->data();
  if (data) {
    if ((int64_t)data->size() != numel)
      return bad(TK_ERR_FORMAT, what, "tensor %s: data has %u floats, expected %" PRId64, name, data->size(), numel);
  } else {
    if (init == TK_INIT_NONE)
      return bad(TK_ERR_FORMAT, what, "tensor %s: data: missing (only a tensor with an init rule may omit it)", name);
    *dataless += numel;
    if (*dataless > kMaxDatalessElems)
      return bad(TK_ERR_FORMAT, what, "tensor %s: tensors without data total more than %" PRId64 " elements", name,
                 kMaxDatalessElems);
  }
  auto mask = ft->mask();
  int64_t mbytes = (numel + 7) / 8;
  if (mask) {
    if ((int64_t)mask->size() != mbytes)
      return bad(TK_ERR_FORMAT, what, "tensor %s: mask has %u bytes, expected %" PRId64 " for %" PRId64 " elements",
                 name, mask->size(), mbytes, numel);
    if (numel % 8 && (mask->Get((flatbuffers::uoffset_t)(mbytes - 1)) >> (numel % 8)))
      return bad(TK_ERR_FORMAT, what, "tensor %s: mask has bits set past element %" PRId64, name, numel - 1);
  }
  auto scores = ft->scores();
  if (scores && (int64_t)scores->size() != numel)
    return bad(TK_ERR_FORMAT, what, "tensor %s: scores has %u floats, expected %" PRId64, name, scores->size(), numel);

  int t = tk_model_add_tensor(m, name, ndim, dims);
  if (t < 0) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
  tk_tensor *tt = &m->tensors[t];
  tt->init = (tk_init)init;
  tt->init_fan_in = ft->init_fan_in();
  tt->prunable = ft->prunable();
  tt->trainable = ft->trainable();
  if (data) {
    copy_floats(tt->data, data, (size_t)numel);
    int64_t bad_at = first_nonfinite(tt->data, numel);
    if (bad_at >= 0)
      return bad(TK_ERR_FORMAT, what, "tensor %s: data[%" PRId64 "] is %s (weights must be finite)", name, bad_at,
                 kind_of_float(tt->data[bad_at]));
  }
  if (scores) {
    if (!(tt->scores = (float *)tk_malloc((size_t)numel * sizeof(float)))) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
    copy_floats(tt->scores, scores, (size_t)numel);
    int64_t bad_at = first_nonfinite(tt->scores, numel);
    if (bad_at >= 0)
      return bad(TK_ERR_FORMAT, what, "tensor %s: scores[%" PRId64 "] is %s (scores must be finite)", name, bad_at,
                 kind_of_float(tt->scores[bad_at]));
  }
  if (mask) {
    /* unpack the bitset (LSB first) and zero the pruned data in the same pass */
    if (!(tt->mask = (uint8_t *)tk_malloc((size_t)numel))) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
    const uint8_t *bits = mask->Data();
    uint8_t *mk = tt->mask;
    float *x = tt->data;
    for (int64_t i = 0; i < numel; i++) {
      uint8_t b = (bits[i >> 3] >> (i & 7)) & 1u;
      mk[i] = b;
      x[i] = b ? x[i] : 0.0f; /* a select, not a branch */
    }
  }
  return TK_OK;
}

/* A [h, w] attribute: absent leaves the defaults, otherwise exactly two values. */
tk_status read_pair(const Vector<int32_t> *v, const char *field, int *a, int *b, const char *what, int i,
                    const char *lname, tk_op op) {
  if (!v) return TK_OK;
  if (v->size() != 2)
    return bad(TK_ERR_FORMAT, what, "layer %d (%s, %s): %s: %u values, expected 2 ([h, w])", i, lname,
               tk_op_name(op), field, v->size());
  for (flatbuffers::uoffset_t k = 0; k < 2; k++) {
    int x = v->Get(k);
    if (x < 0 || x > TK_MAX_DIM) /* the op's own range is checked by tk_model_infer() */
      return bad(TK_ERR_FORMAT, what, "layer %d (%s, %s): %s[%u] = %d out of range 0..%d", i, lname, tk_op_name(op),
                 field, k, x, TK_MAX_DIM);
  }
  *a = v->Get(0);
  *b = v->Get(1);
  return TK_OK;
}

tk_status read_layer(tk_model *m, const fb::Layer *fl, int i, const char *what) {
  if (const char *why = check_string(fl->name(), true, true))
    return bad(TK_ERR_FORMAT, what, "layer %d: name %s", i, why);
  const char *lname = fl->name() ? fl->name()->c_str() : "";
  int op = (int)fl->op();
  if (op < 0 || op >= TK_OP_COUNT)
    return bad(TK_ERR_FORMAT, what, "layer %d (%s): op: unknown op code %d", i, lname, op);
  tk_layer l = tk_layer_default((tk_op)op, lname, i);
  if (auto in = fl->inputs()) {
    if (in->size() < 1 || in->size() > 2)
      return bad(TK_ERR_FORMAT, what, "layer %d (%s, %s): inputs: %u values, expected 1 or 2", i, lname,
                 tk_op_name(l.op), in->size());
    l.n_inputs = (int)in->size();
    for (int k = 0; k < l.n_inputs; k++) l.inputs[k] = in->Get((flatbuffers::uoffset_t)k);
  }
  const struct {
    const char *field;
    int value;
    int *dst;
  } refs[4] = {{"weight", fl->weight(), &l.weight},
               {"bias", fl->bias(), &l.bias},
               {"running_mean", fl->running_mean(), &l.mean},
               {"running_var", fl->running_var(), &l.var}};
  for (const auto &r : refs) {
    if (r.value < -1)
      return bad(TK_ERR_FORMAT, what, "layer %d (%s, %s): %s: tensor index %d (-1 means none)", i, lname,
                 tk_op_name(l.op), r.field, r.value);
    *r.dst = r.value;
  }
  bool pool = l.op == TK_OP_MAXPOOL || l.op == TK_OP_AVGPOOL;
  if (fl->kernel()) {
    if (read_pair(fl->kernel(), "kernel", &l.kh, &l.kw, what, i, lname, l.op) != TK_OK) return TK_ERR_FORMAT;
  } else if (l.op == TK_OP_CONV2D && l.weight >= 0 && l.weight < m->n_tensors && m->tensors[l.weight].ndim == 4) {
    l.kh = (int)m->tensors[l.weight].shape[2]; /* the weight says it */
    l.kw = (int)m->tensors[l.weight].shape[3];
  } else if (pool) {
    return bad(TK_ERR_FORMAT, what, "layer %d (%s, %s): kernel: missing", i, lname, tk_op_name(l.op));
  }
  if (fl->stride()) {
    if (read_pair(fl->stride(), "stride", &l.sh, &l.sw, what, i, lname, l.op) != TK_OK) return TK_ERR_FORMAT;
  } else if (pool) {
    l.sh = l.kh; /* PyTorch: pool stride defaults to the kernel */
    l.sw = l.kw;
  }
  if (read_pair(fl->padding(), "padding", &l.ph, &l.pw, what, i, lname, l.op) != TK_OK ||
      read_pair(fl->dilation(), "dilation", &l.dh, &l.dw, what, i, lname, l.op) != TK_OK)
    return TK_ERR_FORMAT;
  l.groups = fl->groups();
  l.eps = fl->eps();
  l.momentum = fl->momentum();
  l.out_features = fl->out_features();
  if (tk_model_add_layer(m, &l) < 0) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
  return TK_OK;
}

tk_status read_metrics(const Vector<flatbuffers::Offset<fb::Metric>> *v, const char *field, tk_metric **out,
                       int *n_out, const char *what) {
  *out = nullptr;
  *n_out = 0;
  if (!v) return TK_OK;
  tk_metric *ms = (tk_metric *)tk_calloc(v->size() ? v->size() : 1, sizeof *ms);
  if (!ms) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
  *out = ms;
  for (flatbuffers::uoffset_t i = 0; i < v->size(); i++) {
    const fb::Metric *fm = v->Get(i);
    if (const char *why = check_string(fm->name(), true, true))
      return bad(TK_ERR_FORMAT, what, "%s[%u]: name %s", field, i, why);
    if (!(ms[i].name = tk_strdup(fm->name() ? fm->name()->c_str() : "")))
      return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
    ms[i].value = fm->value();
    *n_out = (int)i + 1;
  }
  return TK_OK;
}

tk_status read_input(tk_model *m, const fb::InputSpec *in, const char *what) {
  const struct {
    const char *f;
    int v;
  } dims[3] = {{"channels", in->channels()}, {"height", in->height()}, {"width", in->width()}};
  for (const auto &d : dims)
    if (d.v < 1 || d.v > TK_MAX_DIM)
      return bad(TK_ERR_FORMAT, what, "input: %s = %d out of range 1..%d", d.f, d.v, TK_MAX_DIM);
  if (!std::isfinite(in->min()) || !std::isfinite(in->max()))
    return bad(TK_ERR_FORMAT, what, "input: min/max = %g/%g must be finite", in->min(), in->max());
  m->lo = in->min();
  m->hi = in->max();
  auto mean = in->mean(), sd = in->std();
  if (!mean && !sd) return TK_OK;
  if (!mean || !sd) return bad(TK_ERR_FORMAT, what, "input: %s: missing (mean and std come together)", mean ? "std" : "mean");
  if ((int)mean->size() != in->channels())
    return bad(TK_ERR_FORMAT, what, "input: mean has %u values, expected %d (channels)", mean->size(), in->channels());
  if ((int)sd->size() != in->channels())
    return bad(TK_ERR_FORMAT, what, "input: std has %u values, expected %d (channels)", sd->size(), in->channels());
  size_t c = (size_t)in->channels();
  m->mean = (float *)tk_malloc(c * sizeof(float));
  m->std = (float *)tk_malloc(c * sizeof(float));
  if (!m->mean || !m->std) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
  copy_floats(m->mean, mean, c);
  copy_floats(m->std, sd, c);
  for (size_t k = 0; k < c; k++) {
    if (!std::isfinite(m->mean[k])) return bad(TK_ERR_FORMAT, what, "input: mean[%zu] = %g must be finite", k, m->mean[k]);
    if (!std::isfinite(m->std[k]) || !(m->std[k] > 0))
      return bad(TK_ERR_FORMAT, what, "input: std[%zu] = %g must be positive and finite", k, m->std[k]);
  }
  return TK_OK;
}

tk_status read_provenance(tk_model *m, const fb::Provenance *p, const char *what) {
  if (!p) return TK_OK;
  const struct {
    const char *f;
    const String *s;
    char **dst;
  } strs[4] = {{"method", p->method(), &m->prov.method},
               {"source", p->source(), &m->prov.source},
               {"created", p->created(), &m->prov.created},
               {"notes", p->notes(), &m->prov.notes}};
  for (const auto &s : strs) {
    if (const char *why = check_string(s.s, false, true)) return bad(TK_ERR_FORMAT, what, "provenance: %s %s", s.f, why);
    if (s.s && !(*s.dst = dup_or_null(s.s))) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
  }
  m->prov.sparsity = p->sparsity();
  return read_metrics(p->metrics(), "provenance: metrics", &m->prov.metrics, &m->prov.n_metrics, what);
}

tk_status read_momentum(const tk_model *m, const fb::Tensor *ft, int k, std::vector<bool> &seen, tk_tensor *dt,
                        const char *what) {
  if (const char *why = check_string(ft->name(), true, false))
    return bad(TK_ERR_FORMAT, what, "train_state: momenta[%d]: name %s", k, why);
  const char *name = ft->name()->c_str();
  int t = tk_model_find_tensor(m, name);
  if (t < 0) return bad(TK_ERR_FORMAT, what, "train_state: momentum %s: no tensor of that name in the model", name);
  if (seen[(size_t)t]) return bad(TK_ERR_FORMAT, what, "train_state: momentum %s: given twice", name);
  seen[(size_t)t] = true;
  const tk_tensor *mt = &m->tensors[t];
  if (auto sh = ft->shape()) {
    bool same = (int)sh->size() == mt->ndim;
    for (int d = 0; same && d < mt->ndim; d++) same = get8(sh, (size_t)d) == mt->shape[d];
    if (!same) return bad(TK_ERR_FORMAT, what, "train_state: momentum %s: shape differs from the tensor's", name);
  }
  if (!ft->data()) return bad(TK_ERR_FORMAT, what, "train_state: momentum %s: data: missing", name);
  if ((int64_t)ft->data()->size() != mt->numel)
    return bad(TK_ERR_FORMAT, what, "train_state: momentum %s: data has %u floats, expected %" PRId64, name,
               ft->data()->size(), mt->numel);
  if (ft->mask() || ft->scores())
    return bad(TK_ERR_FORMAT, what, "train_state: momentum %s: %s: not allowed (momenta carry data only)", name,
               ft->mask() ? "mask" : "scores");
  memset(dt, 0, sizeof *dt);
  dt->name = tk_strdup(name);
  dt->data = (float *)tk_alloc_aligned((size_t)mt->numel * sizeof(float));
  if (!dt->name || !dt->data) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
  dt->ndim = mt->ndim;
  memcpy(dt->shape, mt->shape, sizeof dt->shape);
  dt->numel = mt->numel;
  dt->init = TK_INIT_NONE;
  dt->prunable = ft->prunable();
  dt->trainable = ft->trainable();
  copy_floats(dt->data, ft->data(), (size_t)mt->numel);
  int64_t bad_at = first_nonfinite(dt->data, dt->numel);
  if (bad_at >= 0)
    return bad(TK_ERR_FORMAT, what, "train_state: momentum %s: data[%" PRId64 "] is %s", name, bad_at,
               kind_of_float(dt->data[bad_at]));
  return TK_OK;
}

tk_status read_train_state(tk_model *m, const fb::TrainState *ts, const char *what) {
  if (!ts) return TK_OK;
  tk_train_state *st = (tk_train_state *)tk_calloc(1, sizeof *st);
  if (!st) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
  m->train = st;
  st->epoch = ts->epoch();
  st->step = ts->step();
  if (st->epoch < 0 || st->step < 0)
    return bad(TK_ERR_FORMAT, what, "train_state: epoch/step = %d/%" PRId64 " must not be negative", st->epoch, st->step);
  if (auto r = ts->rng()) {
    if (!(st->rng = (uint64_t *)tk_malloc((r->size() ? r->size() : 1) * sizeof(uint64_t))))
      return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
    for (flatbuffers::uoffset_t i = 0; i < r->size(); i++) st->rng[i] = get8(r, i);
    st->n_rng = (int)r->size();
  }
  if (auto mv = ts->momenta()) {
    if (mv->size() > (flatbuffers::uoffset_t)m->n_tensors)
      return bad(TK_ERR_FORMAT, what, "train_state: momenta: %u given for %d tensors", mv->size(), m->n_tensors);
    if (!(st->momenta = (tk_tensor *)tk_calloc(mv->size() ? mv->size() : 1, sizeof(tk_tensor))))
      return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
    std::vector<bool> seen((size_t)m->n_tensors, false);
    for (flatbuffers::uoffset_t k = 0; k < mv->size(); k++) {
      st->n_momenta = (int)k + 1; /* freed by tk_model_free even when half-filled */
      tk_status s = read_momentum(m, mv->Get(k), (int)k, seen, &st->momenta[k], what);
      if (s != TK_OK) return s;
    }
  }
  const struct {
    const char *f;
    const String *s;
    char **dst;
  } strs[2] = {{"config", ts->config(), &st->config}, {"log", ts->log(), &st->log}};
  for (const auto &s : strs) {
    if (const char *why = check_string(s.s, false, true)) return bad(TK_ERR_FORMAT, what, "train_state: %s %s", s.f, why);
    if (s.s && !(*s.dst = dup_or_null(s.s))) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
  }
  return read_metrics(ts->best(), "train_state: best", &st->best, &st->n_best, what);
}

tk_status from_verified(const fb::Model *fm, const char *what, tk_model **out) {
  if (const char *why = check_string(fm->arch(), true, true)) return bad(TK_ERR_FORMAT, what, "arch: %s", why);
  const fb::InputSpec *in = fm->input(); /* required: the Verifier checked it is there */
  model_ptr m(tk_model_new(fm->arch() ? fm->arch()->c_str() : "", fm->classes(), in->channels(), in->height(),
                           in->width()),
              tk_model_free);
  if (!m) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
  m->format_version = fm->format_version();
  if (fm->classes() < 1 || fm->classes() > TK_MAX_DIM)
    return bad(TK_ERR_FORMAT, what, "classes: %d out of range 1..%d", fm->classes(), TK_MAX_DIM);
  tk_status st = read_input(m.get(), in, what);
  if (st != TK_OK) return st;

  auto tv = fm->tensors();
  if (tv && tv->size() > TK_MAX_TENSORS)
    return bad(TK_ERR_FORMAT, what, "tensors: %u given, at most %d allowed", tv->size(), TK_MAX_TENSORS);
  int64_t dataless = 0;
  for (flatbuffers::uoffset_t i = 0; tv && i < tv->size(); i++)
    if ((st = read_tensor(m.get(), tv->Get(i), (int)i, what, &dataless)) != TK_OK) return st;

  auto lv = fm->layers();
  if (!lv || lv->size() == 0) return bad(TK_ERR_FORMAT, what, "layers: missing (a model needs at least one layer)");
  if (lv->size() > TK_MAX_LAYERS)
    return bad(TK_ERR_FORMAT, what, "layers: %u given, at most %d allowed", lv->size(), TK_MAX_LAYERS);
  for (flatbuffers::uoffset_t i = 0; i < lv->size(); i++)
    if ((st = read_layer(m.get(), lv->Get(i), (int)i, what)) != TK_OK) return st;

  if ((st = read_provenance(m.get(), fm->provenance(), what)) != TK_OK) return st;
  if ((st = read_train_state(m.get(), fm->train_state(), what)) != TK_OK) return st;
  if ((st = tk_model_infer(m.get())) != TK_OK) return tk_fail_prefix(st, "%s", nz(what));
  *out = m.release();
  return TK_OK;
}

std::string printable(const uint8_t *p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; i++) {
    char b[8];
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\') s += (char)p[i];
    else snprintf(b, sizeof b, "\\x%02x", p[i]), s += b;
  }
  return s;
}

tk_status from_buffer(const uint8_t *buf, size_t n, const char *what, tk_model **out) {
  if (n == 0) return bad(TK_ERR_FORMAT, what, "empty file (0 bytes), not a model");
  size_t i = 0;
  while (i < n && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r')) i++;
  if (i < n && buf[i] == '{')
    return bad(TK_ERR_FORMAT, what, "this is JSON, not a model file (an architecture file? try ticket init)");
  if (n < 16) return bad(TK_ERR_FORMAT, what, "file is %zu bytes, too short to be a model", n);
  if (n > kMaxFileBytes)
    return bad(TK_ERR_FORMAT, what, "file is %zu bytes, more than the %zu a model file can hold", n, kMaxFileBytes);
  /* A finished FlatBuffer is a whole number of its largest alignment (at least the 4-byte root
   * offset); the last bytes of a file are often a string's NUL and padding that nothing
   * verifies, so this is what catches a file cut by a few bytes. */
  if (n % 4 != 0)
    return bad(TK_ERR_FORMAT, what, "file is %zu bytes, not a multiple of 4: truncated or damaged", n);
  if (!fb::ModelBufferHasIdentifier(buf))
    return bad(TK_ERR_FORMAT, what, "not a Ticket model: identifier \"%s\" at bytes 4..7, expected \"%s\"",
               printable(buf + 4, 4).c_str(), fb::ModelIdentifier());
  Verifier v(buf, n, verifier_options());
  if (!v.VerifyBuffer<fb::Model>(fb::ModelIdentifier())) {
    /* name a newer version rather than the damage it may look like */
    flatbuffers::uoffset_t o = v.VerifyOffset(0);
    Verifier v2(buf, n, verifier_options());
    if (o && reinterpret_cast<const Table *>(buf + o)->VerifyTableStart(v2) &&
        reinterpret_cast<const Table *>(buf + o)->VerifyField<uint32_t>(v2, fb::Model::VT_FORMAT_VERSION, 4)) {
      uint32_t ver = reinterpret_cast<const Table *>(buf + o)->GetField<uint32_t>(fb::Model::VT_FORMAT_VERSION, 1);
      if (ver > kFormatVersion)
        return bad(TK_ERR_FORMAT, what, "format_version %u is newer than this build reads (%u)", ver, kFormatVersion);
    }
    return verify_failed(buf, n, what);
  }
  const fb::Model *fm = fb::GetModel(buf);
  if (fm->format_version() > kFormatVersion)
    return bad(TK_ERR_FORMAT, what, "format_version %u is newer than this build reads (%u)", fm->format_version(),
               kFormatVersion);
  if (fm->format_version() == 0) return bad(TK_ERR_FORMAT, what, "format_version 0 is not a valid version");
  return from_verified(fm, what, out);
}

/* ---- writing ------------------------------------------------------------------------------ */

using Builder = flatbuffers::FlatBufferBuilder;

flatbuffers::Offset<String> opt_string(Builder &b, const char *s) { return s ? b.CreateString(s) : 0; }

flatbuffers::Offset<Vector<float>> float_vec(Builder &b, const float *x, int64_t n) {
  return b.CreateVector(x, (size_t)n);
}

flatbuffers::Offset<fb::Tensor> write_tensor(Builder &b, const tk_tensor *t, bool data_only) {
  auto name = b.CreateString(t->name ? t->name : "");
  int64_t shape[4];
  for (int d = 0; d < t->ndim; d++) shape[d] = t->shape[d];
  auto sh = b.CreateVector(shape, (size_t)t->ndim);
  auto data = float_vec(b, t->data, t->numel);
  flatbuffers::Offset<Vector<uint8_t>> mask = 0;
  flatbuffers::Offset<Vector<float>> scores = 0;
  if (!data_only && t->mask) {
    uint8_t *bits;
    int64_t nb = (t->numel + 7) / 8;
    mask = b.CreateUninitializedVector<uint8_t>((size_t)nb, &bits);
    memset(bits, 0, (size_t)nb);
    for (int64_t i = 0; i < t->numel; i++)
      if (t->mask[i]) bits[i >> 3] |= (uint8_t)(1u << (i & 7));
  }
  if (!data_only && t->scores) scores = float_vec(b, t->scores, t->numel);
  return fb::CreateTensor(b, name, sh, data, mask, scores, data_only ? fb::Init_None : (fb::Init)t->init,
                          data_only ? 0 : t->init_fan_in, t->prunable, t->trainable);
}

flatbuffers::Offset<Vector<flatbuffers::Offset<fb::Metric>>> write_metrics(Builder &b, const tk_metric *ms, int n) {
  std::vector<flatbuffers::Offset<fb::Metric>> v;
  for (int i = 0; i < n; i++) v.push_back(fb::CreateMetric(b, b.CreateString(ms[i].name ? ms[i].name : ""), ms[i].value));
  return b.CreateVector(v);
}

/* Checks what the reader would refuse, so a file is never written that cannot be read. */
tk_status check_writable(const tk_model *m, size_t *estimate) {
  size_t est = 4096 + (m->arch ? strlen(m->arch) : 0) + 8 * (size_t)m->in_c;
  auto tensor_bytes = [](const tk_tensor *t) {
    size_t s = 256 + strlen(t->name ? t->name : "") + 8 * 4 + 4 * (size_t)t->numel;
    if (t->mask) s += (size_t)(t->numel + 7) / 8 + 8;
    if (t->scores) s += 4 * (size_t)t->numel + 8;
    return s;
  };
  for (int i = 0; i < m->n_tensors; i++) {
    const tk_tensor *t = &m->tensors[i];
    if (!t->name || !*t->name || strlen(t->name) > TK_MAX_NAME)
      return tk_fail(TK_ERR_ARG, "tensor %d: name must have 1 to %d bytes", i, TK_MAX_NAME);
    int64_t k = first_nonfinite(t->data, t->numel);
    if (k >= 0)
      return tk_fail(TK_ERR_ARG, "tensor %s: data[%" PRId64 "] is %s; refusing to write a file that cannot be read",
                     t->name, k, kind_of_float(t->data[k]));
    if (t->scores && (k = first_nonfinite(t->scores, t->numel)) >= 0)
      return tk_fail(TK_ERR_ARG, "tensor %s: scores[%" PRId64 "] is %s; refusing to write a file that cannot be read",
                     t->name, k, kind_of_float(t->scores[k]));
    est += tensor_bytes(t);
  }
  for (int i = 0; i < m->n_layers; i++) est += 512 + strlen(m->layers[i].name ? m->layers[i].name : "");
  auto sl = [](const char *s) { return s ? strlen(s) + 8 : 0; };
  est += sl(m->prov.method) + sl(m->prov.source) + sl(m->prov.created) + sl(m->prov.notes);
  for (int i = 0; i < m->prov.n_metrics; i++) est += 64 + sl(m->prov.metrics[i].name);
  if (const tk_train_state *ts = m->train) {
    est += 8 * (size_t)ts->n_rng + sl(ts->config) + sl(ts->log) + 256;
    for (int i = 0; i < ts->n_best; i++) est += 64 + sl(ts->best[i].name);
    for (int i = 0; i < ts->n_momenta; i++) {
      const tk_tensor *t = &ts->momenta[i];
      int64_t k = first_nonfinite(t->data, t->numel);
      if (k >= 0)
        return tk_fail(TK_ERR_ARG, "train_state: momentum %s: data[%" PRId64 "] is %s", t->name, k,
                       kind_of_float(t->data[k]));
      est += tensor_bytes(t);
    }
  }
  if (est >= kMaxFileBytes)
    return tk_fail(TK_ERR_UNSUPPORTED, "model needs about %zu bytes, more than the %zu a model file can hold", est,
                   kMaxFileBytes);
  *estimate = est;
  return TK_OK;
}

tk_status to_buffer(const tk_model *m, void **out, size_t *n_out) {
  size_t est = 0;
  tk_status st = check_writable(m, &est);
  if (st != TK_OK) return st;
  Builder b(est);
  b.ForceDefaults(true); /* every scalar written: exact round trips, no default guessing */

  std::vector<flatbuffers::Offset<fb::Tensor>> tensors;
  tensors.reserve((size_t)m->n_tensors);
  for (int i = 0; i < m->n_tensors; i++) tensors.push_back(write_tensor(b, &m->tensors[i], false));
  auto tv = b.CreateVector(tensors);

  std::vector<flatbuffers::Offset<fb::Layer>> layers;
  layers.reserve((size_t)m->n_layers);
  for (int i = 0; i < m->n_layers; i++) {
    const tk_layer *l = &m->layers[i];
    auto name = b.CreateString(l->name ? l->name : "");
    auto inputs = b.CreateVector(l->inputs, (size_t)(l->n_inputs > 2 ? 2 : l->n_inputs < 0 ? 0 : l->n_inputs));
    int32_t k[2] = {l->kh, l->kw}, s[2] = {l->sh, l->sw}, p[2] = {l->ph, l->pw}, d[2] = {l->dh, l->dw};
    auto kv = b.CreateVector(k, 2), sv = b.CreateVector(s, 2), pv = b.CreateVector(p, 2), dv = b.CreateVector(d, 2);
    layers.push_back(fb::CreateLayer(b, name, (fb::Op)l->op, inputs, l->weight, l->bias, l->mean, l->var, kv, sv, pv,
                                     dv, l->groups, l->eps, l->momentum, l->out_features));
  }
  auto lv = b.CreateVector(layers);

  flatbuffers::Offset<Vector<float>> mean = 0, sd = 0;
  if (m->mean && m->std) {
    mean = float_vec(b, m->mean, m->in_c);
    sd = float_vec(b, m->std, m->in_c);
  }
  auto input = fb::CreateInputSpec(b, m->in_c, m->in_h, m->in_w, mean, sd, m->lo, m->hi);

  auto pm = opt_string(b, m->prov.method), ps = opt_string(b, m->prov.source), pc = opt_string(b, m->prov.created),
       pn = opt_string(b, m->prov.notes);
  auto pmet = m->prov.n_metrics ? write_metrics(b, m->prov.metrics, m->prov.n_metrics) : 0;
  auto prov = fb::CreateProvenance(b, pm, m->prov.sparsity, ps, pc, pmet, pn);

  flatbuffers::Offset<fb::TrainState> train = 0;
  if (const tk_train_state *ts = m->train) {
    auto rng = ts->n_rng ? b.CreateVector(ts->rng, (size_t)ts->n_rng) : 0;
    std::vector<flatbuffers::Offset<fb::Tensor>> mom;
    for (int i = 0; i < ts->n_momenta; i++) mom.push_back(write_tensor(b, &ts->momenta[i], true));
    auto mv = ts->n_momenta ? b.CreateVector(mom) : 0;
    auto cfg = opt_string(b, ts->config), log = opt_string(b, ts->log);
    auto best = ts->n_best ? write_metrics(b, ts->best, ts->n_best) : 0;
    train = fb::CreateTrainState(b, ts->epoch, ts->step, rng, mv, cfg, log, best);
  }

  auto arch = b.CreateString(m->arch ? m->arch : "");
  auto root = fb::CreateModel(b, kFormatVersion, arch, m->classes, input, tv, lv, prov, train);
  fb::FinishModelBuffer(b, root);

  size_t n = b.GetSize();
  void *buf = tk_malloc(n);
  if (!buf) return TK_ERR_NOMEM;
  memcpy(buf, b.GetBufferPointer(), n);
  *out = buf;
  *n_out = n;
  return TK_OK;
}

/* "12: 5: error: msg" (the parser's format, possibly after warning lines) -> one line. */
std::string parser_error(const std::string &err) {
  std::string line = err;
  size_t e = line.rfind("error: ");
  if (e != std::string::npos) {
    size_t start = line.rfind('\n', e);
    line = line.substr(start == std::string::npos ? 0 : start + 1);
  }
  int ln = 0, col = 0, used = 0;
  std::string out;
  if (sscanf(line.c_str(), "%d: %d: error: %n", &ln, &col, &used) == 2 && used > 0)
    out = "line " + std::to_string(ln) + ", column " + std::to_string(col) + ": " + line.substr((size_t)used);
  else
    out = line;
  for (char &c : out)
    if (c == '\n' || c == '\r') c = ' ';
  return out;
}

tk_status from_json(const char *json, const char *what, tk_model **out) {
  const tk_embedded_file *schema = tk_embedded_find("schema/ticket.fbs");
  if (!schema) return tk_fail(TK_ERR_INTERNAL, "schema/ticket.fbs is not embedded in this build");
  if (!json) return bad(TK_ERR_ARG, what, "no JSON text");
  if (strlen(json) > kMaxJsonBytes) return bad(TK_ERR_FORMAT, what, "JSON text is larger than %zu bytes", kMaxJsonBytes);
  flatbuffers::IDLOptions opts;
  flatbuffers::Parser p(opts);
  std::string src(schema->data, schema->size);
  if (!p.Parse(src.c_str(), nullptr, nullptr))
    return tk_fail(TK_ERR_INTERNAL, "embedded schema/ticket.fbs: %s", parser_error(p.error_).c_str());
  if (!p.ParseJson(json, nullptr)) return bad(TK_ERR_FORMAT, what, "%s", parser_error(p.error_).c_str());
  if (p.builder_.GetSize() == 0) return bad(TK_ERR_FORMAT, what, "no JSON object found");
  return from_buffer(p.builder_.GetBufferPointer(), p.builder_.GetSize(), what, out);
}

} // namespace

/* ---- the C API --------------------------------------------------------------------------- */

extern "C" tk_status tk_model_from_buffer(const void *buf, size_t n, const char *what, tk_model **out) {
  if (!out) return tk_fail(TK_ERR_ARG, "tk_model_from_buffer: out is NULL");
  *out = nullptr;
  if (!buf && n) return bad(TK_ERR_ARG, what, "no buffer");
  try {
    /* FlatBuffers reads scalars in place: give it an 8-byte aligned copy when needed */
    if ((uintptr_t)buf % 8 != 0 && n <= kMaxFileBytes) {
      std::unique_ptr<uint8_t[], decltype(&free)> copy((uint8_t *)tk_alloc_aligned(n), free);
      if (!copy) return tk_fail_prefix(TK_ERR_NOMEM, "%s", nz(what));
      memcpy(copy.get(), buf, n);
      return from_buffer(copy.get(), n, what, out);
    }
    return from_buffer((const uint8_t *)buf, n, what, out);
  } catch (const std::bad_alloc &) {
    return bad(TK_ERR_NOMEM, what, "out of memory");
  } catch (...) {
    return bad(TK_ERR_INTERNAL, what, "unexpected exception while reading");
  }
}

extern "C" tk_status tk_model_to_buffer(const tk_model *m, void **buf, size_t *n) {
  if (!m || !buf || !n) return tk_fail(TK_ERR_ARG, "tk_model_to_buffer: NULL argument");
  *buf = nullptr;
  *n = 0;
  try {
    return to_buffer(m, buf, n);
  } catch (const std::bad_alloc &) {
    return tk_fail(TK_ERR_NOMEM, "out of memory while writing the model");
  } catch (...) {
    return tk_fail(TK_ERR_INTERNAL, "unexpected exception while writing the model");
  }
}

extern "C" tk_status tk_model_from_json(const char *json, const char *what, tk_model **out) {
  if (!out) return tk_fail(TK_ERR_ARG, "tk_model_from_json: out is NULL");
  *out = nullptr;
  try {
    return from_json(json, what, out);
  } catch (const std::bad_alloc &) {
    return bad(TK_ERR_NOMEM, what, "out of memory");
  } catch (...) {
    return bad(TK_ERR_INTERNAL, what, "unexpected exception while parsing JSON");
  }
}

extern "C" tk_status tk_model_load(const char *path, tk_model **out) {
  if (!path || !out) return tk_fail(TK_ERR_ARG, "tk_model_load: NULL argument");
  *out = nullptr;
  void *data = nullptr;
  size_t n = 0;
  tk_status st = tk_read_file(path, kMaxFileBytes, &data, &n);
  if (st != TK_OK) return st;
  st = tk_model_from_buffer(data, n, path, out);
  free(data);
  return st;
}

extern "C" tk_status tk_model_save(const tk_model *m, const char *path) {
  if (!m || !path) return tk_fail(TK_ERR_ARG, "tk_model_save: NULL argument");
  void *buf = nullptr;
  size_t n = 0;
  tk_status st = tk_model_to_buffer(m, &buf, &n);
  if (st != TK_OK) return tk_fail_prefix(st, "%s", path);
  st = tk_write_file_atomic(path, buf, n);
  free(buf);
  return st;
}
