package PresenceCluster;

# Helpers for the cluster's tests (t/070, t/071): nodes of
# docker/nginx-node.conf on loopback, one Kafka topic of the run's own.
#
#   req($method, $port, $path, $id, $body)
#                       an HTTP::Tiny response; $id: a bearer token of it
#   cluster_node($file, node => 'a', topic => $topic, [timeout => '2s'],
#                [refresh => '1s'])
#                       the rendered node config made a cluster node:
#                       this run's topic, presence_cluster after
#                       presence_kafka, presence_health in /healthz, the
#                       log written every 50 ms; returns the text, written
#   log_of($topic, $id) the messages of a user: ([headers, value], ...),
#                       in order
#   nodes(a => [$port, $dir], ...)
#                       the nodes status_of() and metric() name
#   status_of($node, $id)
#                       GET /v1/status/$id on a node: the body, or
#                       "status body" when not 200
#   metric($node, $name) a number of the node's /metrics, or undef

use strict;
use warnings;

use HTTP::Tiny ();
use PresenceTest ();
use PresenceDeploy ();
use PresenceKafka ();

our @EXPORT = qw(req cluster_node log_of nodes status_of metric);
use Exporter 'import';

my $http = HTTP::Tiny->new(timeout => 5, keep_alive => 0);
my %node;

sub nodes {
    my (%n) = @_;
    %node = (%node, %n);
}

sub status_of {
    my ($n, $id) = @_;
    my $r = req(GET => $node{$n}[0], "/v1/status/$id", $id);
    return $r->{status} == 200 ? $r->{content} : "$r->{status} $r->{content}";
}

sub metric {
    my ($n, $name) = @_;
    my (undef, $body) = PresenceDeploy::unix_get("$node{$n}[1]/metrics.sock",
                                                 '/metrics');
    return $body =~ /^\Q$name\E (\d+)$/m ? $1 : undef;
}

sub req {
    my ($method, $port, $path, $id, $body) = @_;
    my %h = (headers => {});
    $h{headers}{Authorization} = 'Bearer ' . PresenceTest::token($id)
        if defined $id;
    $h{content} = $body if defined $body;
    return $http->request($method, "http://127.0.0.1:$port$path", \%h);
}

sub cluster_node {
    my ($file, %o) = @_;
    my $c = PresenceDeploy::slurp($file);
    my $timeout = $o{timeout} ? " timeout=$o{timeout}" : '';
    $timeout .= " refresh=$o{refresh}" if $o{refresh};
    $c =~ s{topic=presence\b}{topic=$o{topic}}
        or die "no topic=presence in the node config";
    $c =~ s{^(\s*presence_kafka\s[^\n]*\n)}
           {$1    presence_cluster node=$o{node}$timeout;\n}m
        or die "no presence_kafka in the node config";
    $c =~ s|(location = /healthz \{)[^\}]*\}|$1 presence_health; }|g;
    # the log is written every presence_sync_interval: the replica's lag
    $c =~ s{presence_sync_interval\s+1s;}{presence_sync_interval  50ms;}
        or die "no presence_sync_interval 1s in the node config";
    PresenceDeploy::spew($file, $c);
    return $c;
}

sub log_of {
    my ($topic, $id) = @_;
    my ($ok, $out) = PresenceKafka::kcat('', '-C', '-t', $topic, '-o',
                                         'beginning', '-e', '-q', '-f',
                                         "%k\x1f%h\x1f%s\\n");
    return map { [$_->[1], $_->[2]] } grep { $_->[0] eq $id }
           map { [split /\x1f/, $_, 3] } split /\n/, $out;
}

1;
