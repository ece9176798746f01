package PresenceKafka;

# Helpers for tests that look at Kafka: the mock broker that util/test.sh
# starts (util/services.sh kafka-start; util/kafka-mock.c), read and written
# with kcat.
#
#   kafka_brokers()             the bootstrap address (TEST_NGINX_KAFKA_BROKERS)
#   kafka_messages($topic)      ([key, value], ...) of the whole topic, read
#                               from the beginning; dies when the broker
#                               cannot be read within the timeout
#   kafka_produce($topic, [key, value], ...)
#                               true when every message was acknowledged
#   kafka_down(), kafka_up()    the broker refuses connections, or takes
#                               them again (SIGUSR1 / SIGUSR2 to the mock)
#
# Messages come from all partitions: their order is kept per key only.
# Keys and values must not hold a newline (kcat's framing).

use strict;
use warnings;

use Cwd ();
use File::Basename ();
use IPC::Run ();

our @EXPORT = qw(kafka_brokers kafka_messages kafka_produce kafka_down
                 kafka_up);
use Exporter 'import';

our $TIMEOUT = 10;      # seconds, for one kcat run

my $root = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../..');

sub kafka_brokers {
    return $ENV{TEST_NGINX_KAFKA_BROKERS} if $ENV{TEST_NGINX_KAFKA_BROKERS};

    my $file = ($ENV{PRESENCE_KAFKA_DIR} || "$root/.run/kafka") . '/bootstrap';
    open my $fh, '<', $file or die "no Kafka mock broker ($file): "
                                   . "util/services.sh kafka-start\n";
    chomp(my $b = <$fh> // '');
    return $b;
}

sub kcat {
    my ($in, @args) = @_;

    my ($out, $err) = ('', '');
    my $ok = eval {
        IPC::Run::run(['kcat', '-b', kafka_brokers(), @args], \$in, \$out,
                      \$err, IPC::Run::timeout($TIMEOUT));
    };

    return ($ok ? 1 : 0, $out, $err);
}

sub kafka_messages {
    my ($topic) = @_;

    # a \x1f between key and value, one message a line; an empty or
    # missing topic ends at once with -e
    my ($ok, $out, $err) = kcat('', '-C', '-t', $topic, '-o', 'beginning',
                                '-e', '-q', '-f', "%k\x1f%s\\n");
    die "kafka_messages($topic): kcat failed: $err\n" unless $ok;

    return map { [split /\x1f/, $_, 2] } split /\n/, $out;
}

sub kafka_produce {
    my ($topic, @messages) = @_;

    my $in = join '', map { "$_->[0]\x1f$_->[1]\n" } @messages;

    # kcat exits 1 when a message was not delivered in time
    my ($ok) = kcat($in, '-P', '-t', $topic, '-K', "\x1f",
                    '-X', 'message.timeout.ms=3000');
    return $ok;
}

sub signal_mock {
    my ($sig) = @_;

    my $file = $ENV{PRESENCE_KAFKA_PIDFILE}
        || ($ENV{PRESENCE_KAFKA_DIR} || "$root/.run/kafka") . '/bootstrap.pid';
    open my $fh, '<', $file or die "no Kafka mock broker pid ($file)\n";
    chomp(my $pid = <$fh> // '');
    kill $sig, $pid or die "kafka mock $pid: $!\n";

    # the mock acts on its next turn of the loop: at once, but not inside
    # the kill
    select undef, undef, undef, 0.2;
}

sub kafka_down { signal_mock('USR1') }
sub kafka_up   { signal_mock('USR2') }

1;
