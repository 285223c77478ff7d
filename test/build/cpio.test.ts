/**
 * The newc reader FROM REF uses to take the builder's modules out of a base
 * artifact's initramfs: it reads what cpioNewc writes, stops at the first
 * trailer (an appended INITRD is not read), and refuses what is not newc.
 */
import {execFileSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {gzipSync} from 'node:zlib'

import {describe, expect, it} from 'vitest'

import {S_IFDIR, S_IFLNK, S_IFREG, cpioNewc, firstInitramfsArchive, readCpioNewc, splitInitramfs} from '../../src/disk/cpio.js'

const entries = [
  {name: 'lib', mode: S_IFDIR | 0o755},
  {name: 'lib/modules', mode: S_IFDIR | 0o755},
  {name: 'lib/modules/virtio_blk.ko', mode: S_IFREG | 0o644, data: Buffer.from('\x7fELF one')},
  {name: 'lib/modules/ext4.ko', mode: S_IFREG | 0o644, data: Buffer.alloc(4097, 7)},
  {name: 'bin/sh', mode: S_IFLNK | 0o777, target: 'busybox'},
  {name: 'odd', mode: S_IFREG | 0o600, data: Buffer.from('abc'), uid: 1000, gid: 100},
]

describe('cpio newc reader', () => {
  it('reads back what cpioNewc wrote: names, modes, owners, data and link targets', () => {
    const back = readCpioNewc(cpioNewc(entries))
    expect(back.map((e) => e.name)).toEqual(entries.map((e) => e.name))
    expect(back[3]!.data).toEqual(Buffer.alloc(4097, 7))
    expect(back[4]).toMatchObject({mode: S_IFLNK | 0o777, target: 'busybox'})
    expect(back[5]).toMatchObject({uid: 1000, gid: 100, mode: S_IFREG | 0o600})
    expect(back[5]!.data!.toString()).toBe('abc')
  })

  it('reads an archive GNU cpio wrote', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ovm-cpio-'))
    try {
      execFileSync('bash', ['-c', `cd ${dir} && mkdir -p d && printf 'hello' > d/f && ln -s f d/l && printf 'd\\nd/f\\nd/l\\n' | cpio -o -H newc --quiet > ../${dir.split('/').pop()}.cpio`])
      const back = readCpioNewc(readFileSync(`${dir}.cpio`))
      expect(back.map((e) => e.name)).toEqual(['d', 'd/f', 'd/l'])
      expect(back[1]!.data!.toString()).toBe('hello')
      expect(back[2]!.target).toBe('f')
    } finally {
      rmSync(dir, {recursive: true, force: true})
      rmSync(`${dir}.cpio`, {force: true})
    }
  })

  it('takes only the first archive of an initramfs with another appended, gzip or not', () => {
    const first = cpioNewc(entries.slice(0, 3))
    const extra = cpioNewc([{name: 'init', mode: S_IFREG | 0o755, data: Buffer.from('#!/bin/sh\n')}])
    for (const extraBytes of [extra, gzipSync(extra)]) {
      const initrd = Buffer.concat([gzipSync(first), extraBytes])
      expect(readCpioNewc(firstInitramfsArchive(initrd)).map((e) => e.name)).toEqual(['lib', 'lib/modules', 'lib/modules/virtio_blk.ko'])
    }
    expect(readCpioNewc(firstInitramfsArchive(first))).toHaveLength(3)
  })

  it('splits an initramfs after its first archive, the rest byte for byte', () => {
    const first = cpioNewc(entries.slice(0, 3))
    const extra = cpioNewc([{name: 'init', mode: S_IFREG | 0o755, data: Buffer.from('#!/bin/sh\n')}])
    for (const rest of [Buffer.alloc(0), extra, gzipSync(extra)]) {
      const gz = splitInitramfs(Buffer.concat([gzipSync(first), rest]))
      expect(gz.first.equals(first)).toBe(true)
      expect(gz.rest.equals(rest)).toBe(true)
      const plain = splitInitramfs(Buffer.concat([first, rest]))
      expect(plain.first.equals(first)).toBe(true)
      expect(plain.rest.equals(rest)).toBe(true)
    }
  })

  it('refuses what is not a newc archive, and one cut short', () => {
    expect(() => firstInitramfsArchive(Buffer.from('not an initramfs at all'))).toThrow(/neither gzip nor/)
    expect(() => readCpioNewc(Buffer.from('070707' + '0'.repeat(200)))).toThrow(/no newc header at byte 0/)
    const whole = cpioNewc(entries)
    expect(() => readCpioNewc(whole.subarray(0, 200))).toThrow(/cpio:/)
  })
})
