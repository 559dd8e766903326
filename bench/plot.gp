# plot.gp -- speedup of the compiled engine vs sparsity (bench/sweep.sh results).
#
# gnuplot -e "dir='OUTDIR'; models='resnet18 vgg16_bn'; batches='1 32'; threads='1 2'" bench/plot.gp
# reads OUTDIR/speedup.dat and OUTDIR/layers.dat (bench/report.py; models, batches and threads
# default to the full sweep's) and writes OUTDIR/speedup.png: one panel per (batch, threads), one colour
# per model, solid = over oneDNN, dashed = over PyTorch, black = the ideal 1/(1-s) of a kernel
# that only skips work; and OUTDIR/layers.png: every conv/linear layer's forward speedup over
# oneDNN (first batch, first thread count) against sparsity.
if (!exists("dir")) dir = "."
if (!exists("models")) if (!exists("batches")) batches = "1 32"
if (!exists("threads")) threads = "1 2"
dat = dir."/speedup.dat"
lay = dir."/layers.dat"

set terminal pngcairo noenhanced size 1400,1000 font ",10"
set output dir."/speedup.png"
set logscale y 2
set xrange [0.45:1.0]
set yrange [0.25:128]
set xlabel "sparsity (fraction of conv/linear weights pruned, uniform random per layer)"
set ylabel "speedup (ratio of median latencies)"
set grid ytics xtics
set key top left
ideal(x) = 1 / (1 - x)
set samples 200
set multiplot layout words(batches),words(threads) title "Ticket compiled engine: inference speedup vs sparsity"
# one series: the rows of a model at a batch and thread count, by sparsity
series(m, b, t) = sprintf("< awk '$1 == \"%s\" && $2 == %s && $3 == %s && $4 == \"infer\"' '%s' | sort -g -k5", m, b, t, dat)
do for [b in batches] {
  do for [t in threads] {
    set title sprintf("batch %s, %s thread%s", b, t, t eq "1" ? "" : "s")
    plot ideal(x) title "ideal 1/(1-s)" lc rgb "black" dt 3 lw 1.5, \
      for [i=1:words(models)] series(word(models,i), b, t) using 5:6 with linespoints lc i lw 2 pt 7 \
          title word(models,i)." vs oneDNN", \
      for [i=1:words(models)] series(word(models,i), b, t) using 5:7 with linespoints lc i dt 2 lw 1.5 pt 6 \
          title word(models,i)." vs PyTorch"
  }
}
unset multiplot

set output dir."/layers.png"
set terminal pngcairo noenhanced size 900,650 font ",10"
b1 = word(batches, 1)
t1 = word(threads, 1)
set title sprintf("per-layer forward speedup over oneDNN (batch %s, %s thread%s)", b1, t1, t1 eq "1" ? "" : "s")
set ylabel "layer speedup (oneDNN ms / compiled ms)"
plot ideal(x) title "ideal 1/(1-s)" lc rgb "black" dt 3 lw 1.5, \
  1 title "break-even" lc rgb "gray" lw 1, \
  for [i=1:words(models)] lay using ((strcol(1) eq word(models,i) && strcol(2) eq b1 && strcol(3) eq t1) \
      ? $4 + 0.004 * (i - 2) : 1/0):9 with points lc i pt 7 ps 0.6 title word(models,i)
