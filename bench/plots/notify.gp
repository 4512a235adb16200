# notify.gp - invalidation latency through the kernel monitor vs a bare
# userfaultfd monitor (bench suite "notify"): time until the invalidation
# is done (uodp: the driver callback returned; bare: the event was read).
if (!exists("csvdir")) csvdir = "."
if (!exists("outdir")) outdir = "."
f = csvdir."/notify.csv"
if (system("test -s '".f."' && echo y") ne "y") { print "notify.gp: no ".f; exit }
set datafile separator ","
set terminal pngcairo size 1150,620 font ",9"
set bmargin 9
set rmargin 8
set output outdir."/notify.png"
set title "munmap / madvise(DONTNEED) until the invalidation is done (median us; 1CPU: monitor on the same CPU, xCPU: on the other)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set logscale y
set format y "%g"
set ylabel "microseconds"
set xtics rotate by -35 scale 0 font ",8"
set grid y
set key top left
plot "< grep -F ' done,' '".f."'" using 7:xtic(sprintf("%s %s", strcol(2)[1:strstrt(strcol(2), " done") - 1], strcol(3))) title "uodp", \
     '' using 12 title "bare userfaultfd"
