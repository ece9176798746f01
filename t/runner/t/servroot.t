# t/runner refuses what the real Test::Nginx refuses (issue 11, item 6):
# a file a test leaves in the server root bails out the next block that
# starts nginx ("Can't remove ... (not empty?)"); a file in logs/ does not,
# nor does one under use_hup (every file is removed then).  Each case is a
# small data file run under t/runner, and under the real Test::Nginx too
# when its reference copy is beside the checkout (../shared/test-nginx, or
# the lib folder in PRESENCE_REAL_TEST_NGINX): both must agree.  Runs on its own server root, servroot-runner.

use strict;
use warnings;

use Cwd ();
use File::Temp ();
use Test::More;

my $runner = Cwd::abs_path('t/runner');
my $real = Cwd::abs_path($ENV{PRESENCE_REAL_TEST_NGINX}
                         || '../shared/test-nginx/lib');
my %harness = (runner => $runner);
$harness{real} = $real
    if $real && -f "$real/Test/Nginx/Socket.pm"
       && system($^X, '-I', $real, '-MTest::Nginx::Socket', '-e1') == 0;

my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-runner';
my $dir = File::Temp::tempdir(CLEANUP => 1);

# TEST 1 writes $where (relative to the server root) from its init;
# TEST 2 starts a new nginx
sub data_file {
    my ($where, $hup) = @_;
    my $file = "$dir/case.t";
    open my $out, '>', $file or die "$file: $!";
    print $out <<"T";
use Test::Nginx::Socket 'no_plan';
no_shuffle();
@{[ $hup ? 'use_hup();' : '' ]}
run_tests();

__DATA__

=== TEST 1: leaves $where behind
--- config
    location = /t { return 200 "one\\n"; }
--- init
open my \$f, '>', "\$ENV{TEST_NGINX_SERVER_ROOT}/$where" or die \$!;
print \$f "left\\n";
close \$f;
--- request
GET /t
--- response_body
one



=== TEST 2: a new configuration
--- config
    location = /t { return 200 "two\\n"; }
--- request
GET /t
--- response_body
two
T
    close $out;
    return $file;
}

# runs a data file under a harness: its exit code and output
sub run_case {
    my ($lib, $file) = @_;
    local $ENV{TEST_NGINX_SERVROOT} = $root;
    local $ENV{TEST_NGINX_USE_HUP};
    delete $ENV{TEST_NGINX_USE_HUP};
    system('rm', '-rf', $root);
    my $out = `'$^X' -I '$lib' '$file' 2>&1`;
    my $rc = $? >> 8;
    return ($rc, $out);
}

for my $name (sort keys %harness) {
    my $lib = $harness{$name};

    my ($rc, $out) = run_case($lib, data_file('left.out'));
    isnt($rc, 0, "$name: a file left in the server root fails the file");
    like($out, qr/^Bail out!.*Can't remove \Q$root\E \(not empty\?\)/m,
         "$name: it bails out before TEST 2") or diag($out);
    unlike($out, qr/TEST 2/, "$name: TEST 2 did not run") or diag($out);

    ($rc, $out) = run_case($lib, data_file('logs/left.out'));
    is($rc, 0, "$name: a file left in logs/ is cleaned with it") or diag($out);
    unlike($out, qr/^not ok/m, "$name: every check passed") or diag($out);
    ok(!-e "$root/logs/left.out", "$name: logs/left.out is gone");

    ($rc, $out) = run_case($lib, data_file('left.out', 1));
    is($rc, 0, "$name: use_hup removes a file left in the server root")
        or diag($out);
    ok(!-e "$root/left.out", "$name: left.out is gone");
}

diag('the real Test::Nginx is not beside the checkout: t/runner only')
    if !$harness{real};

system('rm', '-rf', $root);

done_testing();
