# The three stores at once: each change lands in PostgreSQL, Redis and
# Kafka within 2 s, and /metrics tells each sink's queue, writes and errors.

use lib 't/lib';
use Test::Nginx::Socket 'no_plan';
use PresenceTest;
use PresenceStores;
use PresenceKafka;

$ENV{TEST_NGINX_KAFKA_TOPIC} = "presence-all-t$$";

for my $name (qw(kafka_messages)) {
    no strict 'refs';
    *{"Test::Nginx::Util::$name"} = \&{"PresenceKafka::$name"};
}

our $HTTP_CONFIG = <<'CONF';
    presence_zone name=presence size=4m;
    presence_heartbeat_timeout 3s;
    presence_auth_secret $TEST_NGINX_PRESENCE_SECRET;
    presence_postgres "$TEST_NGINX_PG_DSN" pool=2 timeout=1s;
    presence_redis 127.0.0.1:$TEST_NGINX_REDIS_PORT;
    presence_kafka brokers=$TEST_NGINX_KAFKA_BROKERS
                   topic=$TEST_NGINX_KAFKA_TOPIC;
CONF

pg_reset(users => [map { [$_, "user$_"] } 1 .. 30]);

workers(2);
master_on();
no_shuffle();
run_tests();

__DATA__

=== TEST 1: 20 users online, then offline: every change in all three within 2 s (sync interval 1 s)
--- http_config eval: $::HTTP_CONFIG
--- config
    # pg api
--- init
redis_cli('DEL', map { "presence:$_" } 1 .. 30);
my @u = (1 .. 20);
heartbeat($_) == 204 or die for @u;
my $t0 = now();
# new to the table: online once PostgreSQL told their invisible flag
wait_for(1, sub { !grep { self_status($_)->[0] ne 'online' } @u })
    or die 'the users did not come online';
my %st = map { ($_ => self_status($_)) } @u;
# PostgreSQL and Redis read back; Kafka: the broker acknowledged (the
# metric), then read back with kcat
my $landed = sub {
    my ($status, $acked) = @_;
    my $pg = pg_states(@u);
    my $rd = redis_states(@u);
    for my $u (@u) {
        my $s = $st{$u};
        return 0 unless ($pg->{$u} // '') eq "$status,$s->[1]";
        return 0 unless $rd->{$u} eq "$status,$s->[1],$s->[2]";
    }
    return metric('presence_sync_written_total{sink="kafka"}') == $acked;
};
my $in_kafka = sub {
    my %n;
    $n{$_->[0]}++ for kafka_messages($ENV{TEST_NGINX_KAFKA_TOPIC});
    return join ' ', map { "$_:" . ($n{$_} || 0) } @u;
};
ok(wait_for(2, sub { $landed->('online', 20) }), 'online in PostgreSQL, Redis and Kafka within 2 s');
diag(sprintf 'all three held it after %.2f s (sync interval 1 s)', now() - $t0);
is($in_kafka->(), join(' ', map { "$_:1" } @u), 'one message each');
# silence: offline within 3 s + a tick
ok(wait_for(4.5, sub { !grep { self_status($_)->[0] ne "offline" } @u }), "offline in nginx");
$t0 = now();
%st = map { ($_ => self_status($_)) } @u;
ok(wait_for(2, sub { $landed->('offline', 40) }), 'offline in all three within 2 s');
diag(sprintf 'all three held it after %.2f s', now() - $t0);
is($in_kafka->(), join(' ', map { "$_:2" } @u), 'two messages each');
is(metric('presence_sync_queue{sink="postgres"}'), 0, 'postgres queue empty');
is(metric('presence_sync_queue{sink="redis"}'), 0, 'redis queue empty');
is(metric('presence_sync_queue{sink="kafka"}'), 0, 'kafka queue empty');
is(metric('presence_sync_written_total{sink="kafka"}'), 40, '40 messages');
is(metric('presence_sync_errors_total{sink="postgres"}')
   + metric('presence_sync_errors_total{sink="redis"}')
   + metric('presence_sync_errors_total{sink="kafka"}'), 0, 'no errors');
--- request
GET /pause
--- error_code: 204



=== TEST 2: (same nginx) going invisible while offline: PostgreSQL and Redis get the flag, Kafka (the visible status) no message
--- init
my $r = api('PUT', '/v1/status', 21, '{"status":"offline"}');
is($r->[0], 200, 'user 21 goes invisible while offline');
ok(wait_for(3, sub { pg_value('SELECT invisible FROM users WHERE user_id = 21') eq 't' }),
   'invisible in PostgreSQL');
ok(wait_for(3, sub { redis_cli('HGET', 'presence:21', 'invisible') =~ /1/ }),
   'invisible in Redis');
heartbeat(22) == 204 or die 'heartbeat';
ok(wait_for(3, sub { metric('presence_sync_written_total{sink="kafka"}') == 41 }),
   "user 22's online message acknowledged")
    or diag(metric('presence_sync_written_total{sink="kafka"}'));
my %n;
$n{$_->[0]}++ for kafka_messages($ENV{TEST_NGINX_KAFKA_TOPIC});
is($n{21} || 0, 0, 'no message about user 21');
is($n{22} || 0, 1, 'one about user 22');
is(metric('presence_sync_queue{sink="kafka"}'), 0, 'kafka queue empty');
--- request
GET /pause
--- error_code: 204
