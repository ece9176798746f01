# t/lib/PresenceNginx.pm, the one nginx starter, stopper, /metrics reader
# and poll of the tests that start an nginx of their own: a plain nginx
# (no module) on TEST_NGINX_SERVER_PORT and a unix socket, in a server
# root of its own (servroot-nginx).

use strict;
use warnings;

use lib 't/lib';
use Cwd ();
use File::Path ();
use IO::Socket::INET ();
use Test::More;
use Time::HiRes qw(time);
use PresenceNginx;

my $port = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
my $root = ($ENV{TEST_NGINX_SERVROOT} || Cwd::abs_path('t') . '/servroot')
           . '-nginx';

File::Path::rmtree($root);
File::Path::make_path("$root/conf", "$root/logs");
my $user = $> == 0 ? 'user ' . ($ENV{TEST_NGINX_WORKER_USER} || 'nobody') . ';'
                   : '';
open my $fh, '>', "$root/conf/nginx.conf" or die $!;
print $fh <<CONF;
$user
worker_processes 2;
daemon on;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path $root/tmp;
    server {
        listen 127.0.0.1:$port;
        listen unix:$root/sock;
        location = /metrics {
            return 200 "# HELP a counter\\nx_total 3\\nq{sink=\\"pg\\"} 7\\n";
        }
    }
}
CONF
close $fh;

my $ready = 0;
my $master = nginx_start(prefix => $root, port => $port,
                         ready => sub { ++$ready >= 2 });
ok($master && kill(0, $master), "started: master $master");
is($ready, 2, 'ready polled until true');
ok(wait_for(5, sub { children($master) == 2 }), 'children(): its 2 workers');

is_deeply(metrics(), { x_total => 3, 'q{sink="pg"}' => 7 },
          'metrics() of TEST_NGINX_SERVER_PORT, comments left out');
is(metric('x_total', "unix:$root/sock"), 3, 'metric() over a unix socket');
is(metric('absent', "127.0.0.1:$port"), undef, 'an absent one is undef');
my ($status, $body) = nginx_get($port, '/none');
is($status, 404, 'nginx_get: the status');
is(metrics("unix:$root/none"), undef, 'no answer: undef');

my $t0 = time;
is(wait_for(0.3, sub { 0 }), 0, 'wait_for: the last value when it times out');
cmp_ok(time - $t0, '>=', 0.3, 'after the deadline');
is(wait_for(5, sub { 'v' }), 'v', 'the value when true');

eval { nginx_start(prefix => $root) };
like($@, qr/did not start: .*Address already in use/s,
     'a second one on the same port dies saying why');

nginx_stop($master);
ok(!kill(0, $master), 'stopped');

eval { nginx_start(prefix => $root, ready => sub { 0 }, secs => 1) };
like($@, qr/is not ready within 1 s/, 'never ready: dies');
ok(!IO::Socket::INET->new(PeerAddr => "127.0.0.1:$port"),
   'and stops the nginx it started (the port is free)');

File::Path::rmtree($root);
done_testing();
