package redisstore

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// The versions Redis holds are named by the keys the guards build. When the
// guards start naming resources otherwise (a changed key template, a site's
// other first name), the versions stored under the old names are no longer
// updated by any write, and would be trusted again by guards that come back
// to the old naming. AdoptNamings forgets them all when the naming changed
// since the guards last said how they name resources.

// AdoptNamings makes fingerprint, which describes how the guards using this
// store name resources, the one Redis holds. If Redis held another one (or
// none), it first forgets every version, and reports how many: the
// fingerprint is stored only once they are forgotten, so that a guard that
// finds its own fingerprint there can trust what Redis holds.
func (s *Store) AdoptNamings(ctx context.Context, fingerprint string) (changed bool, forgot int64, err error) {
	key := s.cfg.KeyPrefix + "namings"
	old, err := s.rdb.Get(ctx, key).Result()
	switch {
	case err == nil && old == fingerprint:
		return false, 0, nil
	case err != nil && !errors.Is(err, redis.Nil):
		return false, 0, err
	}
	if forgot, err = s.ForgetEveryVersion(ctx); err != nil {
		return true, forgot, err
	}
	return true, forgot, s.rdb.Set(ctx, key, fingerprint, 0).Err()
}

// ForgetEveryVersion makes every version stored under the key prefix
// unknown, on every master of a Cluster, and returns how many it forgot.
// The generations and lock copies stay, as Forget leaves them.
func (s *Store) ForgetEveryVersion(ctx context.Context) (int64, error) {
	var n atomic.Int64
	prefix := s.cfg.KeyPrefix + "ver:{"
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, globEscape(s.cfg.KeyPrefix)+"ver:*", 1000).Iterator()
		var batch []string
		flush := func() error {
			if len(batch) == 0 {
				return nil
			}
			err := s.ForgetAll(ctx, batch)
			n.Add(int64(len(batch)))
			batch = batch[:0]
			return err
		}
		for iter.Next(ctx) {
			key, ok := strings.CutPrefix(iter.Val(), prefix)
			if !ok || !strings.HasSuffix(key, "}") {
				continue
			}
			batch = append(batch, strings.TrimSuffix(key, "}"))
			if len(batch) == 500 {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := iter.Err(); err != nil {
			return err
		}
		return flush()
	}
	var err error
	if cluster, ok := s.rdb.(*redis.ClusterClient); ok {
		err = cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, s.rdb)
	}
	return n.Load(), err
}

// globEscape quotes the characters SCAN's MATCH pattern gives a meaning.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\^-`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
