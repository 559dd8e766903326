/* make_seeds.c -- writes the starting corpus of fuzz_load: the loader-test fixture (every op
 * with tensors, masks, scores, provenance, training state), the same without training state,
 * and a small JSON architecture.  usage: make_seeds DIR */
#include "../unit/load_fixture.h"

#include <stdio.h>

static int put(const char *dir, const char *name, const void *data, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) {
    fprintf(stderr, "make_seeds: cannot write %s\n", path);
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  tk_model *m = fixture_model();
  void *buf = NULL;
  size_t n = 0;
  if (!m || tk_model_to_buffer(m, &buf, &n) != TK_OK) {
    fprintf(stderr, "make_seeds: %s\n", tk_last_error());
    return 1;
  }
  int bad = put(argv[1], "fixture.tkt", buf, n);
  free(buf);
  tk_model *holder = tk_model_new("x", 1, 1, 1, 1); /* takes the train state away */
  holder->train = m->train;
  m->train = NULL;
  tk_model_free(holder);
  if (tk_model_to_buffer(m, &buf, &n) != TK_OK) return 1;
  bad |= put(argv[1], "fixture_notrain.tkt", buf, n);
  free(buf);
  tk_model_free(m);
  static const char json[] =
      "{classes: 2, input: {channels: 1, height: 4, width: 4, mean: [0.5], std: [0.25]},\n"
      " tensors: [{name: \"c.weight\", shape: [2, 1, 3, 3], prunable: true, mask: [255, 1, 2],\n"
      "            data: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18], scores: [1,2,3,4,5,6,7,8,9,1,2,3,4,5,6,7,8,9]},\n"
      "           {name: \"c.bias\", shape: [2], init: TorchDefaultBias, init_fan_in: 9}],\n"
      " layers: [{name: \"c\", op: Conv2d, weight: 0, bias: 1, padding: [1, 1]}, {op: MaxPool, kernel: [2, 2]},\n"
      "          {op: GlobalAvgPool}, {op: Flatten}],\n"
      " provenance: {method: \"seed\", metrics: [{name: \"ra\", value: 0.5}]},\n"
      " train_state: {epoch: 1, rng: [1, 2, 3, 4], momenta: [{name: \"c.bias\", data: [0.5, 0.25]}]}}\n";
  bad |= put(argv[1], "arch.json", json, sizeof json - 1);
  return bad;
}
