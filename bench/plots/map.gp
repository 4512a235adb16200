# map.gp - fault path throughput vs raw MADV_POPULATE (bench suite "map").
if (!exists("csvdir")) csvdir = "."
if (!exists("outdir")) outdir = "."
f = csvdir."/map.csv"
if (system("test -s '".f."' && echo y") ne "y") { print "map.gp: no ".f; exit }
set datafile separator ","
set terminal pngcairo size 1000,560 font ",10"
set output outdir."/map.png"
set title "uodp\\_umem\\_map\\_and\\_lock vs raw populate: ratio = raw time / uodp time (median)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set yrange [0:*]
set ylabel "ratio (1 = as fast as raw)"
set xtics rotate by -25 scale 0
set grid y
set key top right
# Throughput rows only (unit ms); the one-page latency rows are in us.
plot "< grep ',ms,' ".f using 16:xtic(2) title "uodp / raw (speed)", \
     0.8 with lines dt 2 lc rgb "red" title "target 0.80"
