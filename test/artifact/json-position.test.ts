import {describe, expect, it} from 'vitest'

import {jsonErrorOffset, lineCol} from '../../src/util/json-position.js'

describe('jsonErrorOffset', () => {
  it.each(['{}', '[]', '{"a": [1, -2.5e3, true, false, null, "x\\u00e9\\n"]}', ' 1 '])('accepts %s like JSON.parse', (t) => {
    expect(() => JSON.parse(t)).not.toThrow()
    expect(jsonErrorOffset(t)).toBe(-1)
  })

  it.each([
    ['{\n  "a": oops\n}', 2, 8],
    ['{"a": 1,}', 1, 9],
    ['[1 2]', 1, 4],
    ['{"a": "x}', 1, 10],
    ['{"a": 1} x', 1, 10],
    ['', 1, 1],
  ])('finds the error in %j at line %i col %i', (t, line, col) => {
    expect(() => JSON.parse(t)).toThrow()
    expect(lineCol(t, jsonErrorOffset(t))).toEqual({line, col})
  })
})
