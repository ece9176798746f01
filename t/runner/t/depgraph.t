# util/depgraph on tiny objects: a one-way graph passes and prints its
# edges; a circle of two files, and one of three, fails naming the files
# and the symbols of each step; the module's ngx_module_t (ngx_addon_name
# in config) is the one symbol that makes no edge.  Needs cc and nm.

use strict;
use warnings;

use Cwd ();
use File::Temp ();
use Test::More;

my $depgraph = Cwd::abs_path('util/depgraph');
my $dir = File::Temp::tempdir(CLEANUP => 1);

# name => C source; returns the object
sub object {
    my ($name, $src) = @_;
    my $c = "$dir/$name.c";
    open my $out, '>', $c or die "$c: $!";
    print $out $src;
    close $out;
    system($ENV{CC} || 'cc', '-c', '-o', "$dir/$name.o", $c) == 0
        or die "cc $c failed";
    return "$dir/$name.o";
}

sub depgraph {
    my @objects = @_;
    my $out = `$depgraph @objects 2>&1`;
    return ($? >> 8, $out);
}

my $a = object('a', "int b(void);\nint a(void) { return b(); }\n");
my $b = object('b', "int c(void);\nint b(void) { return c(); }\n");
my $c = object('c', "int c(void) { return 0; }\n");

my ($rc, $out) = depgraph($a, $b, $c);
is($rc, 0, 'a -> b -> c: no cycle');
like($out, qr/^  a\.c -> b\.c: b$/m, 'the edge a -> b and its symbol');
like($out, qr/^  b\.c -> c\.c: c$/m, 'the edge b -> c');
unlike($out, qr/cycle/, 'no cycle named');

my $b2 = object('b2', "int a(void);\nint b(void) { return a(); }\n");
($rc, $out) = depgraph($a, $b2);
is($rc, 1, 'a <-> b: exits 1');
like($out, qr/^depgraph: cycle among a\.c b2\.c$/m, 'names both files');
like($out, qr/^depgraph:   (a\.c -> b2\.c -> a\.c|b2\.c -> a\.c -> b2\.c)$/m,
     'and the circle');
like($out, qr/^depgraph:     b2\.c uses a\.c's a$/m, 'and its symbols');

my $c3 = object('c3', "int a(void);\nint c(void) { return a(); }\n");
($rc, $out) = depgraph($a, $b, $c3);
is($rc, 1, 'a -> b -> c -> a: exits 1');
like($out, qr/^depgraph: cycle among a\.c b\.c c3\.c$/m, 'names the three');
like($out, qr/^depgraph:   a\.c -> b\.c -> c3\.c -> a\.c$/m, 'the circle');

# d defines the module (the name config gives) and installs e's handler,
# e finds its conf through the module: no edge e -> d, no cycle
my $module = `sed -n 's/^ngx_addon_name=//p' config`;
chomp $module;
ok($module, "config names the module ($module)");
my $d = object('d', "int $module;\nint e(void);\n"
                    . "int d(void) { return e() + $module; }\n");
my $e = object('e', "extern int $module;\n"
                    . "int e(void) { return $module; }\n");
($rc, $out) = depgraph($d, $e);
is($rc, 0, 'the module descriptor makes no edge');
like($out, qr/^  d\.c -> e\.c: e$/m, 'd -> e remains');
unlike($out, qr/e\.c -> d\.c/, 'no e -> d');

# a symbol defined twice is an error, not a guess
my $a2 = object('a2', "int b(void) { return 1; }\n");
($rc, $out) = depgraph($b, $a2);
isnt($rc, 0, 'a symbol defined by two objects fails');
like($out, qr/defined by both/, 'and says so');

done_testing();
